"""Parents and their child workflows for the crash tests: every child step logs its effects.

Usage: python childapp.py MODE RUN_ID EFFECTS_FILE   (store from WFLO_DATABASE_URL)

``sync``: a sync parent runs ``CHILDREN`` children one after another (``child.run``), then
enqueues one more with ``child.start`` and waits for it. ``async``: an async parent awaits
``asyncio.gather`` of its async children, then ``astart``s one more. A worker serving this module
(``wflo worker -i childapp``) resumes either; the script runs the started children on a worker
thread of its own. The effects log's step numbers are
``100 * child + step``, in the ``start``/``end`` lines ``_killloop.count_effects`` reads.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
import time

import wflo
from wflo.engine import Worker

CHILDREN = 3
STEPS = 4
EFFECTS = os.environ.get("CRASHAPP_EFFECTS", "effects.log")


def _log(line: str) -> None:
    fd = os.open(EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line} {os.getpid()}\n".encode())  # one O_APPEND write: lines never mix
    finally:
        os.close(fd)


@wflo.step(name="childapp.work")
def work(n: int) -> int:
    _log(f"start {n}")
    time.sleep(random.uniform(0.005, 0.04))
    _log(f"end {n}")
    return n


@wflo.step(name="childapp.awork")
async def awork(n: int) -> int:
    _log(f"start {n}")
    await asyncio.sleep(random.uniform(0.005, 0.04))
    _log(f"end {n}")
    return n


@wflo.workflow(name="childapp.child")
def child(c: int) -> int:
    return sum(work(100 * c + s) for s in range(STEPS))


@wflo.workflow(name="childapp.achild")
async def achild(c: int) -> int:
    total = 0
    for s in range(STEPS):
        total += await awork(100 * c + s)
    return total


@wflo.workflow(name="childapp.parent")
def parent() -> int:
    total = sum(child(c) for c in range(CHILDREN))
    return total + child.start(CHILDREN).result(timeout=60)


@wflo.workflow(name="childapp.aparent")
async def aparent() -> int:
    total = sum(await asyncio.gather(*(achild(c) for c in range(CHILDREN))))
    handle = await achild.astart(CHILDREN)
    return total + await handle.aresult(timeout=60)


def expected() -> int:
    return sum(100 * c + s for c in range(CHILDREN + 1) for s in range(STEPS))


if __name__ == "__main__":
    mode, run_id, EFFECTS = sys.argv[1], sys.argv[2], sys.argv[3]
    os.environ["CRASHAPP_EFFECTS"] = EFFECTS
    # The started children's worker, in this process: a kill lands in it too.
    served = Worker(concurrency=2, workflows=["childapp.child", "childapp.achild"])
    threading.Thread(target=served.run, daemon=True).start()
    if mode == "sync":
        print(parent.options(id=run_id).run())
    else:
        print(asyncio.run(aparent.options(id=run_id).arun()))
