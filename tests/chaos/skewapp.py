"""A workflow for the clock-skew test: slow, non-idempotent steps that log who ran them."""

from __future__ import annotations

import os
import time

import wflo


def _log(line: str) -> None:
    with open(os.environ["SKEWAPP_EFFECTS"], "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@wflo.step
def charge(i: int) -> int:
    _log(f"start {i} {os.getpid()}")
    time.sleep(float(os.environ.get("SKEWAPP_SLEEP", "1.0")))
    _log(f"end {i} {os.getpid()}")
    return i


@wflo.workflow(name="skewapp")
def skewapp(steps: int) -> int:
    return sum(charge(i) for i in range(steps))
