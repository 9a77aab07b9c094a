"""Durability of the LangGraph checkpointer's writes (issue 20; "Durability" in docs/langgraph.md).

On SQLite at ``synchronous=FULL`` a checkpoint waits for the disk and a task's ordinary
pending writes commit relaxed: one WAL flush per node instead of two. Observed with strace
(every ``fdatasync`` of the WAL file) in a real child process: the count per node, and that
no WAL write is left unflushed while the caller waits after an ``interrupt()``. A ``kill -9``
right after ``put_writes`` loses nothing. PostgreSQL: the commit mode of each write, seen by a
deferred trigger at commit time. The relaxed commit's ``synchronous`` setting does not leak to
the next transaction on the pooled connection.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from wflo.integrations.langgraph import FLUSH_AFTER, Checkpointer
from wflo.store import Store, open_store

HERE = Path(__file__).parent
CHILD = HERE / "lg_durability_child.py"
NODES = 10


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _strace(tmp_path: Path, *args: str) -> list[tuple[str, float]]:
    """The child's WAL writes, WAL flushes and marks (``getppid``), in order, from strace, each
    with its time (seconds)."""
    strace = shutil.which("strace")
    assert strace, "strace is needed to count disk flushes (apt-get install strace)"
    out = tmp_path / "trace"
    subprocess.run(
        [strace, "-f", "-ttt", "-y", "-o", str(out), "-e", "trace=fdatasync,fsync,getppid,pwrite64,write",
         sys.executable, str(CHILD), str(tmp_path / "w.db"), *args],
        check=True, env=_env(), timeout=120, capture_output=True,
    )  # fmt: skip
    events = []
    for line in out.read_text().splitlines():
        stamp = re.match(r"\s*(?:\d+\s+)?(\d+\.\d+)\s", line)
        at = float(stamp.group(1)) if stamp else 0.0
        if re.search(r"getppid\(", line) and "resumed" not in line:
            events.append(("mark", at))
        elif re.search(r"\bf(data)?sync\(\d+<[^>]*-wal>\)", line):
            events.append(("sync", at))
        elif re.search(r"\b(pwrite64|write)\(\d+<[^>]*-wal>", line):
            events.append(("write", at))
    return events


def test_one_wal_flush_per_node(tmp_path: Path) -> None:
    events = [kind for kind, _ in _strace(tmp_path, "chain", str(NODES))]
    first, last = events.index("mark"), len(events) - 1 - events[::-1].index("mark")
    syncs = events[first:last].count("sync")
    # A checkpoint per step (the input's and one per node) waits for the disk; the pending
    # writes do not. Before the change: two flushes per node (23 for 10 nodes).
    assert NODES <= syncs <= NODES + 3, syncs


@pytest.mark.parametrize("sibling", [False, True], ids=["interrupt", "interrupt+sibling"])
def test_nothing_left_unflushed_while_waiting_after_an_interrupt(tmp_path: Path, sibling: bool) -> None:
    wait = 1.0
    timed = _strace(tmp_path, "interrupt+sibling" if sibling else "interrupt", str(wait))
    events, times = [kind for kind, _ in timed], [at for _, at in timed]
    stop, end = [i for i, e in enumerate(events) if e == "mark"][:2]
    last_write = max(i for i, e in enumerate(events[:end]) if e == "write")
    assert last_write < stop, events  # nothing written while waiting but a flush
    flushed = [i for i in range(last_write, end) if events[i] == "sync"]
    assert flushed, f"a WAL write was left unflushed during the wait: {events[-12:]}"
    # Flushed within the flusher's bound, long before the wait ends. Not necessarily by the
    # interrupt's own commit: LangGraph saves writes on a pool of background threads, so the
    # first node's relaxed write may land after the interrupt's (seen in CI under load). That
    # the interrupt's write itself waits for the disk is ``test_sqlite_commit_mode_of_each_write``.
    assert times[flushed[0]] - times[last_write] < 2 * FLUSH_AFTER, timed[-12:]
    assert wait > 2 * FLUSH_AFTER


def test_kill_9_right_after_put_writes_loses_nothing(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, str(CHILD), str(tmp_path / "w.db"), "put_writes"],
        stdout=subprocess.PIPE, env=_env(), text=True,
    ) as child:  # fmt: skip
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "written"
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    saver = Checkpointer(f"sqlite:///{tmp_path}/w.db?synchronous=FULL")
    try:
        found = saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})
        assert found is not None
        assert sorted(found.pending_writes or []) == [("task-1", "m", "x"), ("task-1", "n", 41)]
    finally:
        saver.close()


@pytest.fixture
def full_store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path}/s.db?synchronous=FULL")
    store.ensure_schema()
    try:
        yield store
    finally:
        store.close()


def _level(cur: object) -> int:
    return int(cur.execute("PRAGMA synchronous").fetchone()[0])  # type: ignore[attr-defined]


def test_relaxed_commit_does_not_leak_to_the_next_transaction(full_store: Store) -> None:
    assert full_store.write_batch(_level, relaxed=True) == 1  # NORMAL for this commit
    assert full_store.write_batch(_level) == 2
    assert full_store.write(_level) == 2

    def fail(cur: object) -> None:
        assert _level(cur) == 1
        raise RuntimeError("the batch fails")

    with pytest.raises(RuntimeError):
        full_store.write_batch(fail, relaxed=True)
    for _ in range(3):
        assert full_store.write(_level) == 2
        assert full_store.read("PRAGMA synchronous") == [(2,)]


def test_sqlite_commit_mode_of_each_write(tmp_path: Path) -> None:
    """The ``synchronous`` level each checkpointer write commits at (2 = FULL: waits for the
    disk; 1 = NORMAL: relaxed), followed on the store's one connection statement by statement:
    the level last set when its ``COMMIT`` ran."""
    from langgraph.checkpoint.base import empty_checkpoint

    saver = Checkpointer(f"sqlite:///{tmp_path}/m.db?synchronous=FULL&pool_size=1")
    try:
        saver.store.ensure_schema()
        levels: list[int] = []
        level = [_level_now(saver.store)]

        def follow(sql: str) -> None:
            if sql.startswith("PRAGMA synchronous = "):
                level[0] = {"NORMAL": 1, "FULL": 2}[sql.rsplit(" ", 1)[1]]
            elif sql == "COMMIT":
                levels.append(level[0])

        (conn,) = saver.store._get_pool()._idle
        conn.set_trace_callback(follow)
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        saved = saver.put(config, empty_checkpoint(), {"step": 0}, {})  # type: ignore[arg-type]
        saver.put_writes(saved, [("n", 1)], "task-1")
        saver.put_writes(saved, [("__interrupt__", "ok?")], "task-2")
        saver.put_writes(saved, [("__error__", "boom")], "task-3")
        saver.put_writes(saved, [("n", 2), ("__resume__", "yes")], "task-4")
        assert levels == [2, 1, 2, 2, 2]
        assert _level_now(saver.store) == 2
    finally:
        saver.close()


def _level_now(store: Store) -> int:
    return int(store.read("PRAGMA synchronous")[0][0])


def test_relaxed_commit_on_a_normal_store_changes_nothing(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/n.db")
    try:
        assert store.write_batch(_level, relaxed=True) == 1
        assert store.write(_level) == 1
        store.sync()  # nothing to flush: no error
    finally:
        store.close()


_LOG = """
CREATE TABLE lg_commit_modes (id bigserial PRIMARY KEY, tbl text, channel text, mode text);
CREATE FUNCTION lg_log_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lg_commit_modes (tbl, channel, mode)
    VALUES (TG_TABLE_NAME, coalesce(to_jsonb(NEW)->>'channel', ''), current_setting('synchronous_commit'));
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER log_mode AFTER INSERT OR UPDATE ON wflo_lg_writes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION lg_log_commit_mode();
CREATE CONSTRAINT TRIGGER log_mode AFTER INSERT OR UPDATE ON wflo_lg_checkpoints
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION lg_log_commit_mode();
"""


@pytest.mark.postgres
def test_postgres_commit_mode_of_each_write(pg_url: str) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    saver = Checkpointer(pg_url)
    try:
        saver.store.ensure_schema()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(_LOG)
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        saved = saver.put(config, empty_checkpoint(), {"step": 0}, {})  # type: ignore[arg-type]
        saver.put_writes(saved, [("n", 1)], "task-1")
        saver.put_writes(saved, [("__interrupt__", "ok?")], "task-2")
        saver.put_writes(saved, [("__error__", "boom")], "task-3")
        modes = saver.store.read("SELECT tbl, channel, mode FROM lg_commit_modes ORDER BY id")
        assert modes == [
            ("wflo_lg_checkpoints", "", "on"),
            ("wflo_lg_writes", "n", "off"),
            ("wflo_lg_writes", "__interrupt__", "on"),
            ("wflo_lg_writes", "__error__", "on"),
        ]
        # The next transaction on the pooled connection commits synchronously again.
        assert saver.store.read("SHOW synchronous_commit") == [("on",)]
    finally:
        saver.close()


def _statements(saver: Checkpointer) -> list[str]:
    """The statements the saver's store runs from now on (its one pooled connection)."""
    seen: list[str] = []
    saver.store.read("SELECT 1")
    (conn,) = saver.store._get_pool()._idle
    conn.set_trace_callback(lambda sql: seen.append(sql if sql.startswith("PRAGMA") else sql.split(" ")[0]))
    return seen


def test_relaxed_writes_are_counted_and_covered_by_the_next_durable_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    from wflo.integrations import langgraph

    monkeypatch.setattr(langgraph, "FLUSH_AFTER", 60.0)  # no flush by time during the test
    saver = Checkpointer(f"sqlite:///{tmp_path}/b.db?synchronous=FULL&pool_size=1")
    try:
        saver.store.ensure_schema()
        seen = _statements(saver)
        config: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        saved = saver.put(config, empty_checkpoint(), {"step": 0}, {})
        flusher = saver._flusher
        assert flusher is not None and (flusher.relaxed, flusher.durable) == (0, 0)
        assert seen == ["BEGIN", "INSERT", "COMMIT"]  # at the store's level: FULL
        saver.put_writes(saved, [("n", 1)], "task-1")
        saver.put_writes(saved, [("m", 2), ("n", 3)], "task-2")
        assert (flusher.relaxed, flusher.durable) == (2, 0)
        relaxed = ["PRAGMA synchronous = NORMAL", "BEGIN", "INSERT", "COMMIT", "PRAGMA synchronous = FULL"]
        assert seen[3:] == relaxed + relaxed[:3] + ["INSERT"] + relaxed[3:]  # a row each
        del seen[:]
        saver.put_writes(saved, [("__error__", "boom")], "task-3")  # waits for the disk: covers both
        assert seen == ["BEGIN", "INSERT", "COMMIT"]
        assert (flusher.relaxed, flusher.durable) == (2, 2)
        saver.put_writes(saved, [("n", 4)], "task-4")
        assert (flusher.relaxed, flusher.durable) == (3, 2)
        saver.put(saved, empty_checkpoint(), {"step": 1}, {})
        assert (flusher.relaxed, flusher.durable) == (3, 3)
        assert saver._flusher_for(saver.store) is flusher  # one flusher per store, kept
        assert saver.store.read("PRAGMA synchronous") == [(2,)]
    finally:
        saver.close()


def test_a_checkpoint_write_takes_a_short_python_path(tmp_path: Path) -> None:
    """LangGraph saves on a background thread beside the graph's next node, so every Python
    call a write makes competes with the graph for the interpreter lock (issue 20: ``put`` cost
    1.06x ``SqliteSaver`` per node). Before: a ``put`` made 20 calls into wflo.store and 16 into
    ``contextlib`` (``write_batch``, ``write``, ``_tx``, ``_connection``, the fence's closure...)."""
    from langgraph.checkpoint.base import empty_checkpoint

    saver = Checkpointer(f"sqlite:///{tmp_path}/c.db?synchronous=FULL")
    try:
        config: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        saved = saver.put(config, empty_checkpoint(), {"step": 0}, {})
        saver.put_writes(saved, [("n", 1)], "task-1")
        for name, write in (
            ("put", lambda: saver.put(saved, empty_checkpoint(), {"step": 1}, {})),
            ("put_writes", lambda: saver.put_writes(saved, [("n", 2)], "task-2")),
        ):
            calls: dict[str, int] = {"store": 0, "contextlib": 0}

            def count(frame: Any, event: str, arg: Any, calls: dict[str, int] = calls) -> None:
                if event == "call":
                    path = frame.f_code.co_filename.replace(os.sep, "/")
                    if "/wflo/store/" in path:
                        calls["store"] += 1
                    elif path.endswith("/contextlib.py"):
                        calls["contextlib"] += 1

            sys.setprofile(count)
            try:
                write()
            finally:
                sys.setprofile(None)
            assert calls["store"] <= 9 and calls["contextlib"] == 0, (name, calls)
    finally:
        saver.close()
