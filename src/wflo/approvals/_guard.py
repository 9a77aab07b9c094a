"""The approval guard: the link of the call boundary that keeps promise P5."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

from .._errors import ApprovalRejected, RunSuspended
from ..engine import Call, Guard
from ..store import NewEvent, now_iso, parse_iso
from ._inbox import ApprovalRequest, Inbox
from ._notify import notify
from ._policy import Approval, action_of


def approval_id_for(run_id: str, call_id: str) -> str:
    """Deterministic: a replayed run finds its request instead of filing another."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"wflo-approval:{run_id}:{call_id}"))


class ApprovalGuard(Guard):
    """Before a call whose policy applies: file the request (once), then suspend the run
    until a decision exists. The run's worker is freed; any worker resumes the run when the
    decision (or the timeout) wakes it. Approved: the call runs (with edited arguments if
    the approver changed them). Rejected: it raises ``ApprovalRejected`` or returns the reason.

    After: nothing (the call's own event records what ran).
    """

    def __init__(self, inbox: Inbox, *, requested_by: str) -> None:
        self.inbox = inbox
        self.requested_by = requested_by

    def before(self, call: Call) -> None:
        policy: Approval | None = call.meta.get("approval")
        if policy is None or not policy.applies(call.meta.get("fn"), call.args, call.kwargs):
            return
        ctx = call.run
        _name_arguments(call)
        approval_id = approval_id_for(ctx.run_id, call.call_id)
        action = action_of(call.name, call.args, call.kwargs)
        req = self._request(call, policy, approval_id, action)
        if req.status == "pending" and req.timeout_at and req.timeout_at <= now_iso():
            req = self._timeout(call, policy, req)
        if req.status == "pending":
            raise RunSuspended(
                run_id=ctx.run_id,
                reason=f"approval {req.id} ({req.tool})",
                wait={"approval_id": req.id, "wake_at": req.timeout_at},
            )
        self._record_decision(call, req)
        if req.status == "approved":
            if req.decision_action:
                call.args = tuple(req.decision_action.get("args", []))
                call.kwargs = dict(req.decision_action.get("kwargs", {}))
            call.event["approval"] = {"id": req.id, "by": req.decided_by, "hash": req.decision_hash or req.action_hash}
            return
        reason = req.reason or req.status
        if policy.on_reject == "return":
            call.meta["result_override"] = f"Not done: the request was {req.status} by {req.decided_by}: {reason}"
            return
        raise ApprovalRejected(approval_id=req.id, reason=reason, decided_by=req.decided_by)

    def _request(self, call: Call, policy: Approval, approval_id: str, action: dict[str, Any]) -> ApprovalRequest:
        try:
            return self.inbox.get(approval_id)
        except Exception:
            pass
        timeout_at = now_iso(policy.timeout_seconds) if policy.timeout_seconds else None
        message = policy.message or call.meta.get("message") or f"{call.name}({_args_text(call)})"
        req, created = self.inbox.create(
            approval_id=approval_id, run_id=call.run.run_id, call_id=call.call_id, tool=call.name, message=message,
            action=action, approvers=list(policy.approvers), quorum=policy.quorum, requested_by=self.requested_by,
            timeout_at=timeout_at, on_timeout=policy.on_timeout, escalate_to=list(policy.escalate_to),
        )  # fmt: skip
        if created:
            call.run.append([NewEvent("approval.requested", {
                "approval_id": req.id, "call": call.call_id, "tool": call.name, "message": message,
                "action_hash": req.action_hash, "approvers": req.approvers, "quorum": req.quorum,
                "requested_by": req.requested_by, "timeout_at": timeout_at,
            })])  # fmt: skip
            notify("created", req, self.inbox.store)
        return req

    def _timeout(self, call: Call, policy: Approval, req: ApprovalRequest) -> ApprovalRequest:
        if req.on_timeout == "escalate" and req.escalations == 0:
            deadline = now_iso(policy.timeout_seconds) if policy.timeout_seconds else None
            req = self.inbox.escalate(req.id, list(req.escalate_to), deadline)
            call.run.append(
                [
                    NewEvent(
                        "approval.escalated",
                        {"approval_id": req.id, "approvers": req.approvers, "timeout_at": deadline},
                    )
                ]
            )
            notify("escalated", req, self.inbox.store)
            return req
        status = "approved" if req.on_timeout == "approve" else "rejected"
        req = self.inbox.close(req.id, status, by="policy:timeout", reason=f"no decision before {req.timeout_at}")
        notify("expired", req, self.inbox.store)
        return req

    def _record_decision(self, call: Call, req: ApprovalRequest) -> None:
        latency = None
        if req.decided_at:
            latency = round((parse_iso(req.decided_at) - parse_iso(req.created_at)).total_seconds(), 3)
        call.run.append([NewEvent("approval.decided", {
            "approval_id": req.id, "call": call.call_id, "status": req.status, "by": req.decided_by, "via": req.via,
            "reason": req.reason, "action_hash": req.decision_hash or req.action_hash, "latency_s": latency,
            "edited": bool(req.decision_action),
        })])  # fmt: skip


def _name_arguments(call: Call) -> None:
    """Show (and bind) the action with named arguments, so an approver can edit any of them."""
    fn = call.meta.get("fn")
    if fn is None or not call.args:
        return
    try:
        bound = inspect.signature(fn).bind(*call.args, **call.kwargs)
    except TypeError:
        return
    if any(p.kind in (p.VAR_POSITIONAL,) for p in inspect.signature(fn).parameters.values()):
        return
    call.args, call.kwargs = (), dict(bound.arguments)


def _args_text(call: Call) -> str:
    parts = [repr(a) for a in call.args] + [f"{k}={v!r}" for k, v in call.kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) < 300 else text[:297] + "..."
