"""Gathered async tasks for the crash test of their replay: each task runs ``first(i)`` (a time
of its own) then ``second(i, …)``; the effects log says what ran.

Usage: python gatherapp.py RUN_ID EFFECTS_FILE MODE   (store from WFLO_DATABASE_URL)

``record``: task 0's ``first`` hangs, the others' ``second`` calls start in reverse task order.
``resume``: the times reversed. Prints the run's result as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import wflo

TASKS = 5
DELAYS = {"record": [600.0, 0.4, 0.3, 0.2, 0.1], "resume": [0.0, 0.1, 0.2, 0.3, 0.4]}
MODE = "record"
EFFECTS = "effects.log"


def _log(line: str) -> None:
    with open(EFFECTS, "a") as fh:
        fh.write(f"{line} {os.getpid()}\n")
        fh.flush()
        os.fsync(fh.fileno())


@wflo.step(name="gatherapp.first")
async def first(i: int) -> int:
    _log(f"first {i}")
    await asyncio.sleep(DELAYS[MODE][i])
    return 100 + i


@wflo.step(name="gatherapp.second")
async def second(i: int, a: int) -> str:
    _log(f"second {i}")
    return f"{i}:{a}"


async def task(i: int) -> str:
    out = await second(i, await first(i))
    _log(f"recorded {i}")  # second's completion is committed once it returns
    return out


@wflo.workflow(name="gatherapp")
async def gatherapp() -> list[str]:
    return list(await asyncio.gather(*(task(i) for i in range(TASKS))))


if __name__ == "__main__":
    run_id, EFFECTS, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
    print(json.dumps(asyncio.run(gatherapp.options(id=run_id).arun())))
