"""The workflow of the lease chaos tests: three logged steps, and a worker that logs lease loss.

Each step appends ``start``/``end`` lines (step, pid, time) to ``LEASE_EFFECTS``, so the test
can tell whether a step ever ran on two workers at once. The workflow's own code, between the
first and the second step, freezes its process (SIGSTOP) if it can take the token file
``LEASE_FREEZE``: exactly one worker freezes there, right after its first step was journaled.
``python leaseapp.py IDLE_SECONDS`` serves the workflow with a worker (INFO logs on stderr;
``LEASE_CONCURRENCY`` runs at once; ``LEASE_BUSY_MS``: on SQLite, how long a write waits for
the lock before it fails, as against a store that is away).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import wflo
from wflo.engine import Worker
from wflo.store import open_store


def _log(kind: str, step: str) -> None:
    # ``step`` is ``name.i`` (the run's index): each run's steps are told apart.
    line = f"{kind} {step} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(os.environ["LEASE_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one O_APPEND write per line: lines of processes never mix
    finally:
        os.close(fd)


def _work(step: str, i: int) -> str:
    _log("start", f"{step}.{i}")
    # A step may be asked to last until the test says so (``LEASE_HOLD_<STEP>`` names a file).
    hold = os.environ.get(f"LEASE_HOLD_{step.upper()}")
    deadline = time.monotonic() + float(os.environ.get("LEASE_STEP_SECONDS", "0.05"))
    while time.monotonic() < deadline or (hold and not os.path.exists(hold)):
        time.sleep(0.01)
    _log("end", f"{step}.{i}")
    return step


@wflo.step
def one(i: int) -> str:
    return _work("one", i)


@wflo.step
def two(i: int) -> str:
    return _work("two", i)


@wflo.step
def three(i: int) -> str:
    return _work("three", i)


def _freeze_once() -> None:
    token = os.environ.get("LEASE_FREEZE")
    if not token:
        return
    try:
        os.remove(token)  # only one process can remove it
    except FileNotFoundError:
        return
    # To this thread: it stops on leaving the call (a process-directed SIGSTOP may be taken by
    # another thread while this one runs on for a few milliseconds, into the next step).
    signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)


@wflo.workflow(name="leaseapp")
def leaseapp(i: int) -> str:
    a = one(i)
    _freeze_once()
    return a + two(i) + three(i)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    store = None
    busy = os.environ.get("LEASE_BUSY_MS")
    if busy:  # SQLite: give up on a held write lock after this long (a store that is away)
        store = open_store(os.environ["WFLO_DATABASE_URL"], verify=False)
        store.busy_timeout_ms = int(busy)  # type: ignore[attr-defined]
    worker = Worker(concurrency=int(os.environ.get("LEASE_CONCURRENCY", "1")), workflows=["leaseapp"], store=store)
    served = worker.run(idle_timeout=float(sys.argv[1]))
    print(f"served {served}", flush=True)
