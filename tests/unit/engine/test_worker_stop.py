"""A stopping worker hands its runs back: each stops after the step it is in, releases its lease
(``run.released``), and any worker resumes it at once, without redoing a step.

The ways around it tried here: a step still running when the stop comes (it is recorded, not
cut off, and not run again), an async run, a run whose lease would otherwise keep others out for
``lease_seconds`` (the second worker must take it within a second or two, not 30 s), the stopping
worker writing after it let go (refused by the fence), and the real command line stopped by
SIGTERM and by Ctrl-C twice and three times. And starting: ``--store-wait`` tries a store that
cannot be opened yet again, and gives up with the reason.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import wflo
from wflo import _config
from wflo.engine import Worker
from wflo.errors import LeaseLost
from wflo.store import Head, NewEvent


def _types(store: object, run_id: str) -> list[str]:
    return [e.type for e in store.events(run_id)]  # type: ignore[attr-defined]


def _stop_in_step(worker: Worker, entered: threading.Event, gate: threading.Event, *, hand_back: bool = True) -> None:
    """Serve in a thread; once a step is in progress, ask the worker to stop (and hand its runs
    back), then let the step end; the worker must then return."""
    served = threading.Thread(target=worker.run, kwargs={"idle_timeout": 30})
    served.start()
    assert entered.wait(10), "the step never started"
    worker.stop(hand_back=hand_back)
    gate.set()
    served.join(15)
    assert not served.is_alive(), "the worker did not stop" + (" after handing its run back" if hand_back else "")


def test_hand_back_after_the_step_in_progress_then_another_worker_resumes_at_once(configured: str) -> None:
    _config.configure(database=configured, lease_seconds=30)
    ran: list[int] = []
    entered, gate = threading.Event(), threading.Event()

    @wflo.step
    def work(i: int) -> int:
        ran.append(i)
        if i == 1:
            entered.set()
            assert gate.wait(10)
        return i * 10

    @wflo.workflow(name="handback.sync")
    def flow() -> int:
        return sum(work(i) for i in range(4))

    handle = flow.start()
    first = Worker(concurrency=2, workflows=["handback.sync"])
    _stop_in_step(first, entered, gate)
    assert (first.completed, first.released) == (0, 1), _types(_config.get_store(), handle.id)

    store = _config.get_store()
    run = store.get_run(handle.id)
    assert run.status == "running" and run.lease_owner is None, run
    types = _types(store, handle.id)
    assert types[-1] == "run.released" and types.count("call.completed") == 2, types  # step 1 recorded, not cut off
    assert ran == [0, 1]

    # Its old owner can no longer write: the fence refuses it.
    last = store.events(handle.id)[-1]
    with pytest.raises(LeaseLost):
        store.append(handle.id, Head(last.seq, last.hash), [NewEvent("note", {})], owner=first.owner)

    t0 = time.monotonic()
    second = Worker(concurrency=1, workflows=["handback.sync"])
    assert second.run(max_runs=1, idle_timeout=10) == 1
    took = time.monotonic() - t0
    # Its lease (30 s) was released: the run is taken at once, not when the lease would lapse.
    assert took < 15, f"the handed-back run waited {took:.1f} s: {_types(store, handle.id)}"
    assert handle.result(timeout=5) == 60
    assert ran == [0, 1, 2, 3], "a step ran twice or not at all"
    types = _types(store, handle.id)
    assert types.count("call.completed") == 4 and "run.resumed" in types


def test_an_async_run_is_handed_back_too(configured: str) -> None:
    _config.configure(database=configured, lease_seconds=30)
    ran: list[int] = []
    entered, gate = threading.Event(), threading.Event()

    @wflo.step
    async def awork(i: int) -> int:
        ran.append(i)
        if i == 0:
            entered.set()
            while not gate.is_set():
                await asyncio.sleep(0.01)
        return i + 1

    @wflo.workflow(name="handback.async")
    async def aflow() -> int:
        total = 0
        for i in range(3):
            total += await awork(i)
        return total

    handle = aflow.start()
    first = Worker(concurrency=1, workflows=["handback.async"])
    _stop_in_step(first, entered, gate)
    assert first.released == 1
    assert _types(_config.get_store(), handle.id)[-1] == "run.released"
    assert Worker(concurrency=1, workflows=["handback.async"]).run(max_runs=1, idle_timeout=10) == 1
    assert handle.result(timeout=5) == 6 and ran == [0, 1, 2]


def test_a_child_run_in_progress_is_handed_back_with_its_parent(configured: str) -> None:
    # A child runs in its parent's thread under the process's owner, not the worker's: the stop must
    # reach it too, or the worker waits for the whole child (a sub-agent) before letting go.
    _config.configure(database=configured, lease_seconds=30)
    ran: list[str] = []
    entered, gate = threading.Event(), threading.Event()

    @wflo.step
    def sub(i: int) -> int:
        ran.append(f"sub{i}")
        if i == 1:
            entered.set()
            assert gate.wait(10)
        return i

    @wflo.workflow(name="handback.child")
    def child() -> int:
        return sum(sub(i) for i in range(3))

    @wflo.step
    def top() -> int:
        ran.append("top")
        return 100

    @wflo.workflow(name="handback.parent")
    def parent() -> int:
        return top() + child() + top()

    handle = parent.start()
    first = Worker(concurrency=1, workflows=["handback.parent", "handback.child"])
    _stop_in_step(first, entered, gate)
    store = _config.get_store()
    kids = [r for r in store.list_runs(limit=50) if r.workflow == "handback.child"]
    assert len(kids) == 1 and kids[0].lease_owner is None, kids
    assert _types(store, kids[0].id)[-1] == "run.released"
    assert _types(store, handle.id)[-1] == "run.released"
    assert ran == ["top", "sub0", "sub1"]

    assert Worker(concurrency=1, workflows=["handback.parent", "handback.child"]).run(max_runs=1, idle_timeout=10) == 1
    assert handle.result(timeout=5) == 203
    assert ran == ["top", "sub0", "sub1", "sub2", "top"], "a step ran twice or not at all"
    assert store.get_run(kids[0].id).status == "succeeded"


def test_stop_without_hand_back_lets_runs_finish(configured: str) -> None:
    entered, gate = threading.Event(), threading.Event()

    @wflo.step
    def slow() -> str:
        entered.set()
        assert gate.wait(10)
        return "done"

    @wflo.workflow(name="handback.finish")
    def flow() -> str:
        return slow() + "!"

    handle = flow.start()
    worker = Worker(concurrency=1, workflows=["handback.finish"])
    _stop_in_step(worker, entered, gate, hand_back=False)
    assert (worker.completed, worker.released) == (1, 0)
    assert handle.result(timeout=5) == "done!"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_step_waiting_out_a_retry_backoff_is_handed_back_without_waiting_it_out(configured: str, kind: str) -> None:
    # The hand-back checks at call boundaries; a retry's backoff (here 60 s) is inside a call and
    # held the worker for the whole wait before. The wait now ends at the stop.
    _config.configure(database=configured, lease_seconds=30)
    tries: list[int] = []
    entered = threading.Event()
    policy = wflo.RetryPolicy(attempts=3, backoff=60, max_backoff=60, jitter=False)

    def attempt() -> str:
        tries.append(1)
        if len(tries) == 1:
            entered.set()
            raise ConnectionError("the first attempt fails")
        return "ok"

    if kind == "sync":

        @wflo.step(retry=policy)
        def flaky() -> str:
            return attempt()

        @wflo.workflow(name=f"handback.retry.{kind}")
        def flow() -> str:
            return flaky() + "!"

    else:

        @wflo.step(retry=policy)
        async def flaky() -> str:  # type: ignore[misc]
            return attempt()

        @wflo.workflow(name=f"handback.retry.{kind}")
        async def flow() -> str:  # type: ignore[misc]
            return await flaky() + "!"

    handle = flow.start()
    worker = Worker(concurrency=1, workflows=[f"handback.retry.{kind}"])
    served = threading.Thread(target=worker.run, kwargs={"idle_timeout": 90})
    served.start()
    assert entered.wait(10), "the step never started"
    time.sleep(0.3)  # into the backoff
    t0 = time.monotonic()
    worker.stop(hand_back=True)
    served.join(20)
    took = time.monotonic() - t0
    assert not served.is_alive(), "the worker waited out the 60 s backoff"
    store = _config.get_store()
    types = _types(store, handle.id)
    assert took < 5, f"the hand-back took {took:.1f} s: {types}"
    assert worker.released == 1 and types[-1] == "run.released", types
    assert "call.retry" in types and "call.failed" not in types, types  # the interrupt is not the call's result
    assert Worker(concurrency=1, workflows=[f"handback.retry.{kind}"]).run(max_runs=1, idle_timeout=10) == 1
    assert handle.result(timeout=5) == "ok!" and len(tries) == 2


# ----------------------------------------------------------------------------- the command line
APP = """
import os, time, wflo

@wflo.step
def nap(i: int) -> int:
    with open(os.environ["EFFECTS"], "a") as f:
        f.write(f"start {i}\\n")
    time.sleep(float(os.environ.get("NAP", "0.4")))
    with open(os.environ["EFFECTS"], "a") as f:
        f.write(f"end {i}\\n")
    return i

@wflo.workflow(name="stopapp.slow")
def slow(n: int) -> int:
    return sum(nap(i) for i in range(n))
"""


@pytest.fixture
def app_env(sqlite_url: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "stopapp.py").write_text(textwrap.dedent(APP))
    env = dict(os.environ)
    env.update(
        WFLO_DATABASE_URL=sqlite_url,
        WFLO_LEASE_SECONDS="30",
        EFFECTS=str(tmp_path / "effects.log"),
        PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]),
    )
    return env


def _worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "wflo.cli", "worker", "--import", "stopapp", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _started(proc: subprocess.Popen[str], effects: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if effects.exists() and effects.read_text().count("start") >= n:
            return
        time.sleep(0.02)
    proc.kill()
    out, _ = proc.communicate()
    raise AssertionError(f"fewer than {n} steps started; the worker printed:\n{out}")


def _enqueue(env: dict[str, str], n: int) -> str:
    _config.configure(database=env["WFLO_DATABASE_URL"])
    sys.path.insert(0, str(Path(env["EFFECTS"]).parent))
    try:
        import stopapp  # type: ignore[import-not-found]

        return str(stopapp.slow.start(n).id)
    finally:
        sys.path.pop(0)
        sys.modules.pop("stopapp", None)


def test_sigterm_waits_the_grace_then_hands_back(app_env: dict[str, str]) -> None:
    run_id = _enqueue(app_env, 12)
    proc = _worker(app_env, "--grace", "0.5")
    effects = Path(app_env["EFFECTS"])
    _started(proc, effects, 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "1 handed back" in out and "Traceback" not in out, out
    store = _config.get_store()
    assert store.get_run(run_id).status == "running" and _types(store, run_id)[-1] == "run.released"

    again = _worker(app_env, "--max-runs", "1", "--idle-exit", "20")
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    assert store.get_run(run_id).output == sum(range(12))
    lines = effects.read_text().split()
    ends = [int(x) for kind, x in zip(lines[::2], lines[1::2], strict=True) if kind == "end"]
    assert sorted(ends) == list(range(12)), "a finished step ran again, or one never finished"


def test_ctrl_c_twice_hands_back_now_three_times_exits_now(app_env: dict[str, str]) -> None:
    env = dict(app_env, NAP="0.3")
    run_id = _enqueue(env, 40)
    proc = _worker(env, "--grace", "60")
    effects = Path(env["EFFECTS"])
    _started(proc, effects, 1)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and time.monotonic() - t0 < 10, out  # not the 60 s grace
    assert "1 handed back" in out, out
    assert _types(_config.get_store(), run_id)[-1] == "run.released"

    env = dict(app_env, NAP="30")  # a step that would hold the worker for half a minute
    started = effects.read_text().count("start")
    proc = _worker(env, "--grace", "60")  # takes the handed-back run again
    _started(proc, effects, started + 1)
    t0 = time.monotonic()
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGINT and time.monotonic() - t0 < 10, out
    assert "exiting now" in out and "Traceback" not in out, out


# ----------------------------------------------------------------------------- starting
def test_store_wait_retries_a_store_that_cannot_be_opened_yet(app_env: dict[str, str], tmp_path: Path) -> None:
    # The store's directory cannot be made while a file stands in its place (as a database that is
    # still starting cannot be reached); it is removed once the worker said it waits (not after a
    # fixed time: under load the worker's start alone took longer): the worker then starts.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    env = dict(app_env, WFLO_DATABASE_URL=f"sqlite:///{blocker}/wflo.db")
    proc = _worker(env, "--store-wait", "30", "--idle-exit", "0.2")
    assert proc.stdout is not None
    lines = []
    with proc.stdout:
        for line in proc.stdout:
            lines.append(line)
            if "waiting for the store" in line and blocker.is_file():
                blocker.unlink()
    assert proc.wait(30) == 0, "".join(lines)
    out = "".join(lines)
    assert (blocker / "wflo.db").is_file(), f"the worker never said it waits for the store:\n{out}"
    assert "worker exiting" in out, out


def test_store_wait_gives_up_with_the_reason(app_env: dict[str, str]) -> None:
    env = dict(app_env, WFLO_DATABASE_URL="postgresql://127.0.0.1:1/nothing")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "worker", "--import", "stopapp", "--store-wait", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert 0.9 < time.monotonic() - t0 < 30
    assert "waiting for the store" in proc.stdout and "Connection refused" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # Without --store-wait: refused at once, as before (a supervisor starts it again).
    proc = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "worker", "--import", "stopapp"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 4 and "waiting for the store" not in proc.stdout


def test_idle_exit_counts_from_the_end_of_the_last_run(configured: str) -> None:
    # "Exit after this long with nothing to do": a run longer than the idle time does not count as
    # idleness (the worker left the moment a long run ended, before a run enqueued then was seen).
    @wflo.workflow(name="handback.long")
    def long() -> str:
        time.sleep(0.6)
        return "done"

    handle = long.start()
    t0 = time.monotonic()
    assert Worker(concurrency=1, workflows=["handback.long"]).run(idle_timeout=0.3) == 1
    assert time.monotonic() - t0 >= 0.9, "the worker left at once after a run longer than --idle-exit"
    assert handle.result(timeout=5) == "done"
