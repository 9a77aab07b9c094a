"""A workflow for the commit-mode tests: its caller can be killed right after the run's start.

Usage: python commitapp.py RUN_ID   (store from WFLO_DATABASE_URL; COMMITAPP_STARTED: a file the
body creates, then sleeps, before any step; COMMITAPP_EFFECTS: where each step logs that it ran)
"""

from __future__ import annotations

import os
import sys
import time

import wflo


def _log(line: str) -> None:
    path = os.environ.get("COMMITAPP_EFFECTS")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


@wflo.step
def work(i: int) -> int:
    _log(f"step-{i}")
    return i


@wflo.workflow(name="commitapp")
def commitapp(n: int) -> int:
    started = os.environ.get("COMMITAPP_STARTED")
    if started:
        with open(started, "w"):
            pass
        time.sleep(600)  # killed here: after the run's start, before any other commit
    return sum(work(i) for i in range(n))


if __name__ == "__main__":
    print(commitapp.options(id=sys.argv[1]).run(3))
