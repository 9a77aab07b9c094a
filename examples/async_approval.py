"""An async workflow asks a person for an approval without blocking its event loop.

``await wflo.aapproval(...)`` files the request on the store's threads; the run suspends and
``arun`` waits for the decision off the loop, while the loop's other coroutines (here a
reviewer who decides a moment later, and a ticker) keep running.

    python examples/async_approval.py
"""

from __future__ import annotations

import asyncio
import tempfile

import wflo


@wflo.step
async def refund(order: str, amount: float) -> str:
    await asyncio.sleep(0)
    return f"refunded {amount} on {order}"


@wflo.workflow(name="async-refund")
async def refund_order(order: str, amount: float) -> str:
    decision = await wflo.aapproval(
        f"Refund {amount} on {order}?", data={"amount": amount}, approvers=["user:reviewer"]
    )
    return await refund(order, decision.data["amount"])


async def reviewer(run_id: str) -> None:
    """Someone at the inbox (here: the same process, as user:reviewer) edits and approves."""
    while not (pending := await asyncio.to_thread(wflo.approvals.list, run_id=run_id)):
        await asyncio.sleep(0.05)
    edited = {"data": {"amount": 80.0}}
    await asyncio.to_thread(wflo.approvals.approve, pending[0].id, principal="user:reviewer", args=edited)
    print(f"user:reviewer approved {pending[0].message!r} with the amount edited to 80.0")


async def ticker(ticks: list[int]) -> None:
    while True:
        await asyncio.sleep(0.01)
        ticks.append(1)


async def main() -> None:
    ticks: list[int] = []
    ticking = asyncio.create_task(ticker(ticks))
    result, _ = await asyncio.gather(refund_order.options(id="refund-1").arun("o-17", 120.0), reviewer("refund-1"))
    ticking.cancel()
    print(result, f"(the loop ticked {len(ticks)} times meanwhile)")
    assert result == "refunded 80.0 on o-17"


with tempfile.TemporaryDirectory() as tmp:
    wflo.configure(database=f"sqlite:///{tmp}/async_approval.db")
    asyncio.run(main())
