"""A PostgreSQL step's append on the client (issue 20, pgcpu): its parameters built ready for
libpq from the append's own values (``_postgres._step_values``, sent as ``_pgdirect.Values``),
its connection taken without a ``contextlib`` generator, the pool checked against the process
id without a ``getpid`` system call. What that must keep: the same rows, byte for byte, on the
sync path and from the event loop; text holding NUL refused before anything is written; a
forked child still takes a pool of its own."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from wflo.store import Head, NewEvent, link_hash, open_store
from wflo.store._conn import process_id
from wflo.store._pgdirect import Values
from wflo.store._postgres import _STEP_ALONE, PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    with open_store(f"{pg_url}&pool_size=2") as opened:
        assert isinstance(opened, PostgresStore)
        yield opened


def _run(store: PostgresStore, run_id: str, owner: str | None = "a") -> Head:
    run, _ = store.create_run(run_id=run_id, workflow="w", input={}, owner=owner, lease_seconds=30)
    return Head(run.last_seq, run.last_hash)


def _spy(store: PostgresStore, attr: str) -> list[tuple[str, Any]]:
    """The statements and parameters the store sends through ``attr`` from now on."""
    sent: list[tuple[str, Any]] = []
    real = getattr(store, attr)

    def spy(conn: Any, stmt: Any, params: Any) -> Any:
        sent.append((stmt.sql, params))
        return real(conn, stmt, params)

    setattr(store, attr, spy)
    return sent


# Text the encoding must carry exactly: non-ASCII, quotes, backslashes, braces, a float.
_DATA = {"é✓": 'a"b\\c{d}', "n": [1, 2.5, None, True], "": ""}


def _check_chain(store: PostgresStore, run_id: str, head: Head, new: Head) -> None:
    """The events after ``head`` read back as the chain ``new`` ends (each link recomputed)."""
    prev = head.hash
    events = store.events(run_id, after_seq=head.seq)
    for event in events:
        assert event.prev_hash == prev
        assert event.hash == link_hash(prev, run_id, event.seq, event.type, event.at, event.data_json)
        prev = event.hash
    assert (events[-1].seq, events[-1].hash) == (new.seq, new.hash)
    assert events[-1].data == _DATA and events[-1].type == "step.completed"


@pytest.mark.parametrize("owner", ["a", None])
def test_a_steps_parameters_go_ready_for_libpq_and_read_back_exactly(store: PostgresStore, owner: str | None) -> None:
    run_id = f"r-ready-{owner}"
    head = _run(store, run_id, owner)
    sent = _spy(store, "_direct")
    new = store.append(run_id, head, [NewEvent("step.completed", _DATA)], owner=owner)
    assert [(sql, type(params)) for sql, params in sent] == [(_STEP_ALONE[0].sql, Values)]
    _check_chain(store, run_id, head, new)
    assert store.get_run(run_id).last_seq == new.seq


def test_a_steps_parameters_from_the_loop_go_ready_for_libpq_and_read_back_exactly(store: PostgresStore) -> None:
    head = _run(store, "r-ready-loop")
    sent = _spy(store, "_direct_gen")

    async def main() -> Head:
        writer = store.loop_writer("r-ready-loop")
        assert writer is not None, "no on-loop writer"
        try:
            return await writer.append("r-ready-loop", head, [NewEvent("step.completed", _DATA)], owner="a")  # type: ignore[no-any-return]
        finally:
            writer.close()

    new = asyncio.run(main())
    assert [(sql, type(params)) for sql, params in sent] == [(_STEP_ALONE[0].sql, Values)]
    _check_chain(store, "r-ready-loop", head, new)


@pytest.mark.parametrize("where", ["type", "owner", "head"])
def test_a_steps_text_holding_nul_is_refused_and_nothing_is_written(store: PostgresStore, where: str) -> None:
    head = _run(store, f"r-nul-{where}")
    owner = "a\x00b" if where == "owner" else "a"
    kind = "step.\x00completed" if where == "type" else "step.completed"
    given = Head(head.seq, head.hash[:-1] + "\x00") if where == "head" else head
    with pytest.raises(psycopg.DataError):
        store.append(f"r-nul-{where}", given, [NewEvent(kind, {})], owner=owner)
    assert store.get_run(f"r-nul-{where}").last_seq == head.seq


def test_a_steps_append_calls_no_contextlib_and_no_getpid(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ``_connection`` was a ``contextmanager`` generator (its object, ``__enter__``,
    ``__exit__``, two ``next``) and ``_get_pool`` asked ``os.getpid()`` (a system call) on
    every store call."""
    head = _run(store, "r-calls")
    head = store.append("r-calls", head, [NewEvent("step.completed", {})], owner="a")  # warm
    pids: list[int] = []
    getpid = os.getpid
    monkeypatch.setattr(os, "getpid", lambda: pids.append(1) or getpid())
    calls: list[str] = []

    def count(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.replace(os.sep, "/").endswith("/contextlib.py"):
            calls.append(frame.f_code.co_name)

    sys.setprofile(count)
    try:
        new = store.append("r-calls", head, [NewEvent("step.completed", {})], owner="a")
    finally:
        sys.setprofile(None)
    assert new.seq == head.seq + 1
    assert calls == [] and pids == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_knows_its_process_and_takes_a_pool_of_its_own(store: PostgresStore) -> None:
    parent = store._get_pool()
    assert process_id() == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer on the pipe, never return into pytest
        try:
            ok = process_id() == os.getpid() and store._pool_pid != process_id()
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.read(read, 1) == b"1" and status == 0
    finally:
        os.close(read)
    assert store._get_pool() is parent  # the parent's own, kept


def test_an_interrupted_step_append_gives_its_connection_back(pg_url: str) -> None:
    """The step's connection is taken and given back by ``_append_step`` itself: an interrupt
    (Ctrl-C) on the way must not keep it out of a pool of one."""
    with open_store(f"{pg_url}&pool_size=1") as store:
        assert isinstance(store, PostgresStore)
        store.pool_timeout = 1.0  # a connection kept out: StoreUnavailableError after 1 s
        head = _run(store, "r-interrupted")

        def interrupted(conn: Any, stmt: Any, params: Any) -> Any:
            raise KeyboardInterrupt

        store._direct = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            store.append("r-interrupted", head, [NewEvent("step.completed", {})], owner="a")
        del store._direct
        new = store.append("r-interrupted", head, [NewEvent("step.completed", {})], owner="a")
        assert new.seq == head.seq + 1 and store.get_run("r-interrupted").last_seq == new.seq
