"""Named queues: limits that hold across real worker processes, on both stores."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import wflo
from wflo import _config
from wflo.engine import Worker
from wflo.store import open_store, parse_iso

APP = """
import time
import wflo

wflo.Queue("limited", concurrency=3)
wflo.Queue("ordered", concurrency=1)
wflo.Queue("parts", per_partition=1)
wflo.Queue("rated", rate_limit=(3, 1.0))

@wflo.workflow(name="q.job", queue="limited")
def job(i: int, pause: float = 0.15) -> int:
    time.sleep(pause)
    return i
"""


def _app(tmp_path: Path) -> Path:
    path = tmp_path / "queueapp.py"
    path.write_text(textwrap.dedent(APP))
    return path


def _workers(url: str, app: Path, count: int = 2, concurrency: int = 4) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "WFLO_DATABASE_URL": url,
        "WFLO_POLL_INTERVAL": "0.05",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    cmd = [sys.executable, "-m", "wflo.cli", "worker", "--import", str(app), "-c", str(concurrency), "-q"]
    cmd += ["--idle-exit", "1.5"]
    return [subprocess.Popen(cmd, env=env, cwd=str(app.parent)) for _ in range(count)]


def _drain(url: str, app: Path, started: list[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    procs = _workers(url, app)
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    store = open_store(url)
    try:
        rows = store.read(
            "SELECT id, status, started_at, finished_at, priority, partition_key FROM runs WHERE id IN "
            f"({', '.join('?' * len(started))})",
            started,
        )
    finally:
        store.close()
    out = [dict(zip(("id", "status", "start", "end", "priority", "key"), r, strict=True)) for r in rows]
    assert all(r["status"] == "succeeded" for r in out), out
    return out


def _max_overlap(rows: list[dict[str, Any]]) -> int:
    """The most runs whose [started_at, finished_at] intervals overlap at one moment."""
    edges = sorted([(parse_iso(r["start"]), 1) for r in rows] + [(parse_iso(r["end"]), -1) for r in rows])
    now = most = 0
    for _, step in edges:  # at a tie the end (-1) sorts first: touching intervals do not overlap
        now += step
        most = max(most, now)
    return most


@pytest.fixture
def app(tmp_path: Path, store_url: str) -> Path:
    _config.configure(database=store_url, lease_seconds=10.0, poll_interval=0.05)
    path = _app(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        import queueapp  # noqa: F401  the same queues and workflow the workers declare
    finally:
        sys.path.remove(str(tmp_path))
    yield path
    sys.modules.pop("queueapp", None)
    _config.reset()


def test_limits_hold_across_two_worker_processes(app: Path, store_url: str) -> None:
    """Two worker processes of 4 threads each drain four queues at once (one pair of
    processes for all four, to keep the test short)."""
    import queueapp

    job = queueapp.job
    # concurrency=3: 2 processes x 4 threads could run 8 at once.
    limited = [job.start(i).id for i in range(12)]
    # concurrency=1 and priorities: the claims follow priority, then age.
    ordered = [job.options(queue="ordered", priority=p).start(i, 0.02).id for i, p in enumerate((0, 5, 1, 9, 5, 0, 3))]
    # per_partition=1: each key one at a time, different keys side by side.
    parts = [job.options(queue="parts", partition_key="abc"[i % 3]).start(i, 0.1).id for i in range(9)]
    # rate_limit=(3, 1.0): never 4 starts in one second.
    rated = [job.options(queue="rated").start(i, 0.0).id for i in range(7)]

    rows = {r["id"]: r for r in _drain(store_url, app, limited + ordered + parts + rated)}

    assert _max_overlap([rows[i] for i in limited]) == 3  # never more, and the workers did fill it

    by_start = sorted((rows[i] for i in ordered), key=lambda r: (r["start"], r["id"]))
    assert [r["priority"] for r in by_start] == [9, 5, 5, 3, 1, 0, 0]
    assert [r["id"] for r in by_start if r["priority"] == 5] == [ordered[1], ordered[4]]  # the older first

    for key in "abc":
        assert _max_overlap([rows[i] for i in parts if rows[i]["key"] == key]) == 1
    assert _max_overlap([rows[i] for i in parts]) >= 2

    starts = sorted(parse_iso(rows[i]["start"]) for i in rated)
    for a, b in zip(starts, starts[3:], strict=False):
        assert (b - a).total_seconds() >= 1.0, starts


def test_worker_concurrency_limits_one_worker(configured: str) -> None:
    wflo.Queue("solo", worker_concurrency=1)

    @wflo.workflow(name="q.solo", queue="solo")
    def solo(i: int) -> int:
        time.sleep(0.05)
        return i

    ids = [solo.start(i).id for i in range(4)]
    Worker(concurrency=4).run(idle_timeout=0.5)
    store = open_store(configured)
    rows = store.read(
        f"SELECT id, status, started_at, finished_at FROM runs WHERE id IN ({', '.join('?' * len(ids))})", ids
    )
    store.close()
    rows_d = [{"start": r[2], "end": r[3]} for r in rows]
    assert all(r[1] == "succeeded" for r in rows) and _max_overlap(rows_d) == 1


def test_a_worker_leaves_runs_of_queues_it_does_not_know(configured: str) -> None:
    q = wflo.Queue("elsewhere")

    @wflo.workflow(name="q.elsewhere", queue=q)
    def far() -> int:
        return 1

    handle = far.start()
    from wflo.engine import _queues

    del _queues._queues["elsewhere"]  # as in a worker process that never declared it
    try:
        assert Worker(concurrency=1).run(idle_timeout=0.3) == 0
        assert handle.status() == "queued"
    finally:
        _queues._queues["elsewhere"] = q
    assert Worker(concurrency=1).run(max_runs=1, idle_timeout=2) == 1
    assert handle.result(timeout=5) == 1


def test_mistakes_are_clear_errors(configured: str) -> None:
    with pytest.raises(wflo.UserError, match="concurrency must be a whole number"):
        wflo.Queue("bad", concurrency=0)
    with pytest.raises(wflo.UserError, match="rate_limit must be"):
        wflo.Queue("bad", rate_limit=(5,))  # type: ignore[arg-type]
    with pytest.raises(wflo.UserError, match="needs a name"):
        wflo.Queue("")
    wflo.Queue("twice", concurrency=2)
    wflo.Queue("twice", concurrency=2)  # the same again: a module imported twice
    with pytest.raises(wflo.errors.ConfigurationError, match="declared twice"):
        wflo.Queue("twice", concurrency=3)

    @wflo.workflow(name="q.plain")
    def plain() -> int:
        return 1

    with pytest.raises(wflo.UserError, match="need a queue"):
        plain.options(priority=3).start()
    with pytest.raises(wflo.UserError, match="not declared"):
        plain.options(queue="nowhere").start()
    with pytest.raises(wflo.UserError, match="queue must be a Queue or a str"):  # checked at the decorator
        wflo.workflow(queue=3)(lambda: 1)
    with pytest.raises(wflo.UserError, match="not declared"):
        Worker(queues=["nowhere"])


def test_claim_queries_read_only_active_runs(sqlite_url: str) -> None:
    """Every claim query on SQLite is answered from an index of active runs, never a scan of
    the table or of an index that holds finished runs (the cliff of issue 20)."""
    from wflo.store._claim import QueueRule

    store = open_store(sqlite_url)
    seen: list[tuple[str, tuple[Any, ...]]] = []
    real = store.execute

    def spy(cur: Any, sql: str, params: Any = ()) -> Any:
        seen.append((sql, tuple(params)))
        return real(cur, sql, params)

    store.execute = spy  # type: ignore[method-assign]
    store.create_run(run_id="w", workflow="wf", input={}, queue="q", partition_key="k")
    rules = [QueueRule("q", concurrency=2, per_partition=1, rate_limit=(5, 1.0))]
    assert store.claim_next("me", 30, ["wf"], rules) is not None
    store.create_run(run_id="w2", workflow="wf", input={}, queue="q", partition_key="j")
    assert store.claim_next("me", 30, ["wf"], rules) is not None
    claims = [(s, p) for s, p in seen if s.startswith("SELECT")]
    assert len(claims) >= 6
    store.execute = real  # type: ignore[method-assign]
    for sql, params in claims:
        plan = " ".join(str(r[-1]) for r in store.read("EXPLAIN QUERY PLAN " + sql, params))
        assert "SCAN runs" not in plan and "runs_workflow" not in plan, (sql, plan)
        if "status =" in sql:  # the rate limit's count (by start time) alone may use it
            assert plan.count("runs_queue_started") == sql.count("started_at >"), (sql, plan)
    store.close()


def test_a_worker_can_serve_only_some_queues(configured: str) -> None:
    mine, theirs = wflo.Queue("mine"), wflo.Queue("theirs")

    @wflo.workflow(name="q.pick")
    def pick(i: int) -> int:
        return i

    a = pick.options(queue=mine).start(1)
    b = pick.options(queue="theirs").start(2)
    c = pick.start(3)  # no queue: every worker serves it
    assert Worker(concurrency=2, queues=[mine]).run(idle_timeout=0.3) == 2
    assert (a.status(), b.status(), c.status()) == ("succeeded", "queued", "succeeded")
    assert Worker(concurrency=2, queues=[theirs]).run(max_runs=1, idle_timeout=2) == 1
    assert b.result(timeout=5) == 2


PICKAPP = """
import wflo

wflo.Queue("a")
wflo.Queue("b")

@wflo.workflow(name="q.cli.pick")
def pick(i: int) -> int:
    return i
"""


def _worker_cli(url: str, app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "WFLO_DATABASE_URL": url,
        "WFLO_POLL_INTERVAL": "0.05",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    cmd = [sys.executable, "-m", "wflo.cli", "worker", "--import", str(app), "--idle-exit", "1", *args]
    return subprocess.run(cmd, env=env, cwd=str(app.parent), capture_output=True, text=True, timeout=60)


def test_worker_cli_serves_only_the_named_queues(tmp_path: Path, store_url: str) -> None:
    """``wflo worker --queue a`` completes the runs of queue a; those of queue b stay queued."""
    _config.configure(database=store_url, poll_interval=0.05)
    app = tmp_path / "pickapp.py"
    app.write_text(textwrap.dedent(PICKAPP))
    sys.path.insert(0, str(tmp_path))
    try:
        import pickapp
    finally:
        sys.path.remove(str(tmp_path))
    try:
        on_a = [pickapp.pick.options(queue="a").start(i) for i in range(3)]
        on_b = [pickapp.pick.options(queue="b").start(i) for i in range(3, 5)]
        done = _worker_cli(store_url, app, "--queue", "a")
        assert done.returncode == 0, done.stderr
        assert "queue(s) a " in done.stdout and "after 3 run(s)" in done.stdout, done.stdout
        assert [h.status() for h in on_a] == ["succeeded"] * 3
        assert [h.status() for h in on_b] == ["queued"] * 2
        # A worker for both (-Q is --queue) then takes b's runs.
        assert _worker_cli(store_url, app, "-q", "-Q", "a", "-Q", "b").returncode == 0
        assert [h.result(timeout=5) for h in on_b] == [3, 4]
    finally:
        sys.modules.pop("pickapp", None)
        _config.reset()


def test_worker_cli_refuses_a_queue_no_module_declares(tmp_path: Path, store_url: str) -> None:
    """A typo in --queue is a one-line error and a failing exit status, not a traceback nor a
    worker that idles forever on a queue nobody starts runs on."""
    app = tmp_path / "pickapp.py"
    app.write_text(textwrap.dedent(PICKAPP))
    done = _worker_cli(store_url, app, "--queue", "a", "--queue", "c")
    assert done.returncode != 0
    assert "queue 'c' is not declared" in done.stderr and "declared: a, b" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
