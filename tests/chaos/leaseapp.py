"""The workflow of the lease chaos tests: three logged steps, and a worker that logs lease loss.

Each step appends ``start``/``end`` lines (step, pid, time) to ``LEASE_EFFECTS``, so the test
can tell whether a step ever ran on two workers at once. The workflow's own code, between the
first and the second step, freezes its process (SIGSTOP) if it can take the token file
``LEASE_FREEZE``: exactly one worker freezes there, right after its first step was journaled.
``python leaseapp.py IDLE_SECONDS`` serves the workflow with a worker (INFO logs on stderr).
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


def _log(kind: str, step: str) -> None:
    line = f"{kind} {step} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(os.environ["LEASE_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one O_APPEND write per line: lines of processes never mix
    finally:
        os.close(fd)


def _work(step: str, seconds: float) -> str:
    _log("start", step)
    # A step may be asked to last until the test says so (``LEASE_HOLD_<STEP>`` names a file).
    hold = os.environ.get(f"LEASE_HOLD_{step.upper()}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or (hold and not os.path.exists(hold)):
        time.sleep(0.01)
    _log("end", step)
    return step


@wflo.step
def one() -> str:
    return _work("one", float(os.environ.get("LEASE_STEP_SECONDS", "0.05")))


@wflo.step
def two() -> str:
    return _work("two", float(os.environ.get("LEASE_STEP_SECONDS", "0.05")))


@wflo.step
def three() -> str:
    return _work("three", float(os.environ.get("LEASE_STEP_SECONDS", "0.05")))


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
def leaseapp() -> str:
    a = one()
    _freeze_once()
    return a + two() + three()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    served = Worker(concurrency=1, workflows=["leaseapp"]).run(idle_timeout=float(sys.argv[1]))
    print(f"served {served}", flush=True)
