"""An async parent waiting for a child run that another owner of this process holds (both stores).

A worker that resumes a parent and its children at once runs the children on its slots while
the parent, replaying, finds each child held and waits for it. That wait must leave the child's
place in the store's work order (``Store.off_loop``'s key) free: the child's own journal writes
go there. Before, the wait ran on a store thread in the child's order, and a worker serving both
hung for good (tests/chaos/test_child_crash.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import Any

import wflo
from wflo import _config


@wflo.workflow(name="childwait.kid")
async def kid(x: int) -> int:
    return x + 1


@wflo.workflow(name="childwait.parent")
async def parent() -> int:
    return await kid.options(id="childwait-kid").arun(41)


def test_a_parent_waiting_for_a_held_child_leaves_the_childs_store_order_free(configured: str) -> None:
    store = _config.get_store()
    kid.options(id="childwait-kid").start(41)
    # Held for a long while by a live owner of this process, as a worker's slot holds it.
    slot = f"{socket.gethostname()}:{os.getpid()}:worker-childwait"
    assert store.claim("childwait-kid", slot, 600).lease_owner == slot
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(asyncio.run(parent.arun())), daemon=True)
    runner.start()
    deadline = time.monotonic() + 10
    while not any(r.workflow == "childwait.parent" for r in store.list_runs(limit=10)):
        assert time.monotonic() < deadline, "the parent never started"
        time.sleep(0.01)

    async def child_store_work() -> None:
        # What the child's slot does: store work in the child's order, while the parent waits
        # (several looks, over the parent's first look at the child and its pause after it).
        for _ in range(10):
            record = await store.off_loop(store.get_run, "childwait-kid", key="childwait-kid")
            assert record.lease_owner == slot and not record.done
            looks.append(record.id)
            await asyncio.sleep(0.05)

    looks: list[str] = []
    slot_work = threading.Thread(target=lambda: asyncio.run(child_store_work()), daemon=True)
    slot_work.start()
    slot_work.join(timeout=20)
    assert len(looks) == 10, "the child's store work queued behind its parent's wait for it"
    assert runner.is_alive() and not outcome  # still waiting for the held child
    store.release("childwait-kid", slot)  # the slot lets it go: the parent takes and runs it
    runner.join(timeout=30)
    assert outcome == [42]
    assert store.get_run("childwait-kid").status == "succeeded"
