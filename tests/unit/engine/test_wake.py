"""Waits wake on changes, not on a poll: an idle worker process resumes a woken run, and
``handle.result()`` returns, soon after the commit, with a poll interval of a whole second."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import wflo
from wflo import _config
from wflo.engine import RunHandle
from wflo.store import Head, NewEvent, Store, now_iso, open_store, parse_iso

APP = """
import wflo

@wflo.workflow(name="wake.echo")
def echo(i: int) -> int:
    return i
"""

FAR = "2999-01-01T00:00:00.000000Z"


def _waiting_run(store: Store, run_id: str, wake_at: str = FAR) -> None:
    """A run suspended (as a pending approval leaves it), claimable at ``wake_at``."""
    rec, _ = store.create_run(run_id=run_id, workflow="wake.echo", input={"args": [7], "kwargs": {}}, owner="setup:1:x")
    store.append(
        run_id,
        Head(rec.last_seq, rec.last_hash),
        [NewEvent("run.waiting", {"reason": "test", "wait": {}})],
        owner="setup:1:x",
        status="waiting",
        release=True,
        wake_at=wake_at,
    )


@pytest.fixture
def worker(tmp_path: Path, store_url: str) -> subprocess.Popen[str]:
    """A worker process, idle, that looks again on its own only once a second."""
    app = tmp_path / "wakeapp.py"
    app.write_text(textwrap.dedent(APP))
    env = {**os.environ, "WFLO_DATABASE_URL": store_url, "WFLO_POLL_INTERVAL": "1.0"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "wflo.cli", "worker", "--import", str(app), "-c", "2"],
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = threading.Event()
    threading.Thread(target=lambda: (proc.stdout.readline(), ready.set(), proc.stdout.read()), daemon=True).start()  # type: ignore[union-attr]
    assert ready.wait(30), "the worker did not start"
    # One run first: the worker's first run pays for imports the measured ones must not.
    store = open_store(store_url)
    _waiting_run(store, "warm-up")
    store.set_wake("warm-up", now_iso())
    assert RunHandle("warm-up", store).result(timeout=30) == 7
    store.close()
    time.sleep(0.2)
    yield proc
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


def test_woken_runs_resume_and_results_return_soon(worker: subprocess.Popen[str], store_url: str) -> None:
    _config.configure(database=store_url, poll_interval=1.0)
    store = open_store(store_url)
    ids = [f"wake-{i}" for i in range(5)]
    for run_id in ids:
        _waiting_run(store, run_id)
    resume_ms, result_ms = [], []
    for run_id in ids:
        time.sleep(0.1)  # the worker is idle again, waiting
        t0 = time.time()
        store.set_wake(run_id, now_iso())  # what an approval decision does
        assert RunHandle(run_id, store).result(timeout=10) == 7
        result_ms.append((time.time() - t0) * 1000)
        resumed = next(e for e in store.events(run_id) if e.type == "run.resumed")
        resume_ms.append((parse_iso(resumed.at).timestamp() - t0) * 1000)
    store.close()
    # Goals: 50 ms on SQLite, 10 ms on PostgreSQL; loose bounds for a loaded 2-core machine.
    # A 1 s poll would put the median near 500 ms.
    assert statistics.median(resume_ms) < 150, resume_ms
    assert statistics.median(result_ms) < 250, result_ms


def test_a_timer_wakes_an_idle_worker_when_due(worker: subprocess.Popen[str], store_url: str) -> None:
    from wflo.store import now_iso as later

    store = open_store(store_url)
    due = later(0.4)
    _waiting_run(store, "timer-1", wake_at=due)
    assert RunHandle("timer-1", store).result(timeout=10) == 7
    resumed = next(e for e in store.events("timer-1") if e.type == "run.resumed")
    late = (parse_iso(resumed.at) - parse_iso(due)).total_seconds()
    store.close()
    assert -0.005 < late < 0.2, late  # not before it is due, and not a poll period after


def test_result_waits_on_changes_not_a_poll(configured: str) -> None:
    @wflo.workflow(name="wake.inproc")
    def quick() -> int:
        return 1

    handle = quick.start()
    store = open_store(configured)
    done_at: list[float] = []

    def finish_later() -> None:
        time.sleep(0.3)
        rec = store.claim(handle.id, "other:1:x", 30)
        done_at.append(time.monotonic())  # the final commit starts now
        store.append(
            handle.id, Head(rec.last_seq, rec.last_hash), [NewEvent("run.completed", {"output": 1})],
            owner="other:1:x", status="succeeded", output=1, finish=True,
        )  # fmt: skip

    threading.Thread(target=finish_later).start()
    assert handle.result(timeout=10) == 1
    late = time.monotonic() - done_at[0]
    store.close()
    assert late < 0.15, late


def test_the_change_feed_survives_a_terminated_listen_connection(pg_url: str) -> None:
    """PostgreSQL drops the LISTEN connection (a restart, pg_terminate_backend): waiters are
    woken to look again, the feed listens anew, and later notifications arrive."""
    import uuid

    import psycopg

    name = f"wflo-feed-{uuid.uuid4().hex[:8]}"
    store = open_store(f"{pg_url}&application_name={name}")
    try:
        with store.changes("run-x") as waiter:
            time.sleep(0.3)  # the feed's thread is listening
            with psycopg.connect(pg_url, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND query = 'LISTEN wflo_runs'",
                    (name,),
                ).fetchall()
            assert killed == [(True,)]
            assert waiter.wait(5.0)  # told to look again
            time.sleep(0.5)  # listening again
            waiter.wait(0)
            store.set_wake("run-x", now_iso())  # no such run: only the notification matters
            t0 = time.monotonic()
            assert waiter.wait(5.0)
            assert time.monotonic() - t0 < 0.5
    finally:
        store.close()


def test_a_script_ahead_of_the_store_clock_backs_off_instead_of_claiming_in_a_loop(sqlite_url: str) -> None:
    """A run due by the script's clock but refused by the store's (which judges): the script's
    next looks back off, 5 ms doubling up to the poll interval, so a clock running ahead cannot
    turn a wait into a stream of claims; a run not due yet is waited for until its time."""
    import dataclasses
    from datetime import UTC, datetime

    from wflo.engine._workflow import _next_look
    from wflo.store import iso

    with open_store(sqlite_url) as store:
        record, _ = store.create_run(run_id="r", workflow="w", input={}, owner=None)
    due = dataclasses.replace(record, status="waiting", wake_at="2000-01-01T00:00:00.000000Z")
    waits, refused = [], 0
    for _ in range(12):
        wait, refused = _next_look(due, 1.0, refused)
        waits.append(wait)
    assert waits[:4] == [0.005, 0.01, 0.02, 0.04] and waits[-1] == 1.0 and refused == 12
    later = dataclasses.replace(record, status="waiting", wake_at=FAR)
    assert _next_look(later, 1.0, refused) == (1.0, 0)  # the poll, and the count starts again
    soon = dataclasses.replace(record, status="waiting", wake_at=iso(datetime.now(UTC), 0.3))
    wait, _ = _next_look(soon, 5.0, 0)
    assert 0.2 < wait <= 0.3003  # the deadline, and 0.2 ms (then it has passed)
