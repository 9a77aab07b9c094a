"""A workflow that asks for approval, for the control plane's API and panel tests."""

from __future__ import annotations

import wflo


@wflo.tool(approval=wflo.Approval(when=lambda amount, **_: amount > 100, approvers=["role:finance"], timeout="1h"))
def refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    return f"refunded {amount} on {order_id}"


@wflo.workflow(name="panel-refunds")
def refunds(order_id: str, amount: float) -> str:
    return refund(order_id, amount)


@wflo.tool(approval=wflo.Approval(approvers=["role:finance"], quorum=2))
def wire(to: str, usd: int) -> str:
    return f"wired {usd} to {to}"


@wflo.workflow(name="panel-wires")
def wires(to: str, usd: int) -> str:
    return wire(to, usd)
