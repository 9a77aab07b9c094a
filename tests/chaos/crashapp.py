"""A workflow for the crash tests: each step logs its effects to a file, then sleeps a little.

Usage: python crashapp.py RUN_ID EFFECTS_FILE STEPS   (store from WFLO_DATABASE_URL; RUN_ID "-": generated)
"""

from __future__ import annotations

import os
import random
import sys
import time

import wflo

EFFECTS = os.environ.get("CRASHAPP_EFFECTS", "effects.log")


def _log(line: str) -> None:
    with open(EFFECTS, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@wflo.step
def work(i: int) -> int:
    _log(f"start {i} {os.getpid()}")
    time.sleep(random.uniform(0, 0.04))
    _log(f"end {i} {os.getpid()}")
    return i * i


@wflo.workflow(name="crashapp")
def crashapp(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += work(i)
    return total


if __name__ == "__main__":
    run_id, EFFECTS, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ["CRASHAPP_EFFECTS"] = EFFECTS
    # "-": a generated id.
    print(crashapp.run(steps) if run_id == "-" else crashapp.options(id=run_id).run(steps))
