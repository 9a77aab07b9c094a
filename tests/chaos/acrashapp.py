"""An async workflow for the crash tests: each async step logs its effects, then sleeps a little.

Usage: python acrashapp.py RUN_ID EFFECTS_FILE STEPS   (store from WFLO_DATABASE_URL)

The run's store work happens on the store's threads (``Store.off_loop``) while the loop runs
the steps: a kill lands in either.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

import wflo

EFFECTS = os.environ.get("CRASHAPP_EFFECTS", "effects.log")


def _log(line: str) -> None:
    with open(EFFECTS, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@wflo.step
async def work(i: int) -> int:
    _log(f"start {i} {os.getpid()}")
    await asyncio.sleep(random.uniform(0, 0.04))
    _log(f"end {i} {os.getpid()}")
    return i * i


@wflo.workflow(name="acrashapp")
async def acrashapp(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += await work(i)
    return total


if __name__ == "__main__":
    run_id, EFFECTS, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ["CRASHAPP_EFFECTS"] = EFFECTS
    print(asyncio.run(acrashapp.options(id=run_id).arun(steps)))
