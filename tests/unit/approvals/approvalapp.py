"""Workflows for the approval tests (imported by workers in other processes too)."""

from __future__ import annotations

import os

import wflo

EFFECTS = os.environ.get("APPROVALAPP_EFFECTS", "")


def _effect(line: str) -> None:
    if EFFECTS:
        with open(EFFECTS, "a") as fh:
            fh.write(line + "\n")


@wflo.tool(approval=wflo.Approval(when=lambda amount, **_: amount > 100, approvers=["role:finance"], timeout="1h"))
def refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    _effect(f"refund {order_id} {amount}")
    return f"refunded {amount} on {order_id}"


def _amount(amount: float) -> float:
    """The attack of issue 14: a process whose code computes another amount for the same call."""
    override = os.environ.get("APPROVALAPP_AMOUNT")
    return float(override) if override else amount


@wflo.workflow(name="refunds")
def refunds(order_id: str, amount: float) -> str:
    return refund(order_id, _amount(amount))


@wflo.tool(approval=wflo.Approval(approvers=["role:finance"], on_change="stop"))
def strict_refund(order_id: str, amount: float) -> str:
    _effect(f"strict_refund {order_id} {amount}")
    return f"refunded {amount} on {order_id}"


@wflo.workflow(name="strict-refunds")
def strict_refunds(order_id: str, amount: float) -> str:
    return strict_refund(order_id, _amount(amount))


@wflo.tool(approval=wflo.Approval(approvers=["role:finance"], quorum=2))
def wire(to: str, usd: int) -> str:
    return f"wired {usd} to {to}"


@wflo.workflow(name="wires")
def wires(to: str, usd: int) -> str:
    return wire(to, usd)


@wflo.tool(approval=wflo.Approval(on_reject="return"))
def delete_rows(table: str) -> str:
    return f"deleted {table}"


@wflo.workflow(name="llm-tool")
def llm_tool(table: str) -> str:
    return delete_rows(table)


@wflo.workflow(name="inline")
def inline(rows: int) -> dict:
    decision = wflo.approval(f"Delete {rows} rows from prod.customers?", data={"rows": rows}, approvers=["role:dba"])
    return {"approved": decision.approved, "data": decision.data}


@wflo.tool(approval=wflo.Approval(timeout=0.3, on_timeout="reject"))
def risky() -> str:
    return "done"


@wflo.workflow(name="times-out")
def times_out() -> str:
    return risky()


@wflo.tool(
    approval=wflo.Approval(approvers=["user:bob"], timeout=0.3, on_timeout="escalate", escalate_to=["user:carol"])
)
def escalating() -> str:
    return "done after escalation"


@wflo.workflow(name="escalates")
def escalates() -> str:
    return escalating()


@wflo.tool(approval=wflo.Approval(approvers=["role:finance"]))
def pay(to: str, *notes: str) -> str:
    """A tool taking *args: its call keeps positional values."""
    return f"paid {to} ({', '.join(notes)})"


@wflo.workflow(name="pays")
def pays(to: str) -> str:
    return pay(to, "invoice 7")
