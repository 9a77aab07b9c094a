"""What other runs' rate-limit waits cost a run that waits for nothing (shared by the tests of
async steps' and async LLM calls' waits): each wait must be made on its run's event loop, not
on one of the store's threads, which every async run of the process shares."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import wflo
from wflo import _config


def store_work_behind_waits(limit: Any, waiting: Any, name: str) -> tuple[list[Any], float]:
    """Empty ``limit``'s bucket (a ``wflo.policies.rate_limit``), start as many runs of ``waiting`` (a workflow whose call waits
    for a turn of ``limit``; run ids ``{name}-wait-N``) as the store has threads, and time a
    plain async run of three steps meanwhile. Returns the waiting runs' results and that time."""
    store = _config.get_store()
    threads = store._offloader().threads

    @wflo.step(name=f"{name}.plain")
    async def plain(i: int) -> int:
        return i

    @wflo.workflow(name=f"{name}.free")
    async def free() -> int:
        return sum([await plain(i) for i in range(3)])

    async def main() -> tuple[list[Any], float]:
        await free.arun()  # the store open, the clients wrapped
        while await asyncio.to_thread(limit.try_take, store, 0.0) == 0:
            pass  # the bucket is empty: a turn comes every 2 s
        runs = [asyncio.ensure_future(waiting.options(id=f"{name}-wait-{i}").arun()) for i in range(threads)]
        await asyncio.sleep(0.3)  # each of them waits for its turn now
        t0 = time.perf_counter()
        assert await free.options(id=f"{name}-free").arun() == 3
        took = time.perf_counter() - t0
        return list(await asyncio.gather(*runs)), took

    return asyncio.run(main())
