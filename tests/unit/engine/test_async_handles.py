"""The async twins of a run's handle and of ``start`` (both stores).

``Workflow.astart`` enqueues on the store's threads; ``RunHandle.arecord``, ``astatus``,
``aevents`` and ``acancel`` read and write there. Before them, async code had only the blocking
forms: a store busy for a while (a SQLite writer holding the lock) froze the whole event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import wflo
from wflo import _config
from wflo.engine import RunHandle, Worker
from wflo.store import SYSTEM_CHAIN


@wflo.workflow(name="ahandle.echo")
async def echo(x: int) -> int:
    return x


@wflo.workflow(name="ahandle.kid")
async def kid(x: int) -> int:
    return x + 1


@wflo.workflow(name="ahandle.parent")
async def parent() -> str:
    handle = await kid.astart(1)
    await wflo.aapproval("go on?", approvers=["user:fin"])
    return handle.id


def test_astart_enqueues_and_the_handle_reads_and_cancels_asynchronously(configured: str) -> None:
    async def enqueue() -> tuple[RunHandle, RunHandle]:
        first, second = await echo.astart(7), await echo.options(id="ahandle-2").astart(8)
        assert await first.astatus() == "queued"
        assert (await first.aevents())[0].type == "run.created"
        assert (await second.arecord()).id == "ahandle-2"
        assert await second.acancel(by="user:ops") == "cancelled"
        return first, second

    first, second = asyncio.run(enqueue())
    assert Worker(concurrency=1, workflows="ahandle.echo").run(max_runs=1, idle_timeout=2) == 1
    assert asyncio.run(first.aresult(timeout=5)) == 7
    assert second.status() == "cancelled"
    asked = [e.data for e in _config.get_store().events(SYSTEM_CHAIN) if e.type == "run.cancel_requested"]
    assert {"run_id": "ahandle-2", "by": "user:ops", "via": "local"} in asked


def test_a_childs_astart_is_journaled_once_and_replayed_after_the_parent_waits(configured: str) -> None:
    handle = parent.start()
    Worker(concurrency=1, workflows="ahandle.parent").run(max_runs=1, idle_timeout=2)
    assert handle.status() == "waiting"
    (request,) = wflo.approvals.list(run_id=handle.id)
    wflo.approvals.approve(request.id, principal="user:fin", action_hash=request.action_hash)
    assert Worker(concurrency=1, workflows="ahandle.parent").run(max_runs=1, idle_timeout=5) == 1
    child_id = handle.result(timeout=5)
    kids = _config.get_store().list_runs(parent_id=handle.id)
    assert [k.id for k in kids] == [child_id]  # the replay found the child, it did not start another
    assert RunHandle(child_id).status() == "queued"


def test_astart_leaves_the_loop_free_while_the_store_is_busy(tmp_path: object) -> None:
    # A SQLite writer holds the lock for 0.6 s; the start waits for it on a store thread while
    # the loop goes on ticking (the blocking ``start`` froze it for the whole wait).
    path = f"{tmp_path}/busy.db"
    _config.configure(database=f"sqlite:///{path}")
    try:
        _config.get_store()  # created and migrated before the lock is taken
        taken, release = threading.Event(), threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(path, timeout=10)
            conn.execute("BEGIN IMMEDIATE")
            taken.set()
            release.wait(5)
            conn.rollback()
            conn.close()

        holder = threading.Thread(target=hold)
        holder.start()
        taken.wait(5)

        async def main() -> tuple[int, RunHandle]:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            threading.Timer(0.6, release.set).start()
            started = time.monotonic()
            handle = await echo.astart(1)
            assert time.monotonic() - started >= 0.5  # it did wait for the lock
            ticker.cancel()
            return ticks, handle

        ticks, handle = asyncio.run(main())
        holder.join()
        assert ticks >= 20, ticks  # the loop ran during the wait
        assert handle.status() == "queued"
    finally:
        _config.reset()
