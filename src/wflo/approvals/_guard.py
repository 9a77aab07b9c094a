"""The approval guard: the link of the call boundary that keeps promise P5."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

from .._config import settings
from .._errors import ActionMismatchError, ApprovalRejected, RunStopped, RunSuspended
from ..engine import Call, Guard
from ..store import NewEvent, parse_iso
from ._inbox import ApprovalRequest, Inbox
from ._notify import notify
from ._params import action_text, params_of
from ._policy import Approval, action_hash, action_of, describe_rule


def approval_id_for(run_id: str, call_id: str, action_hash: str | None = None) -> str:
    """Deterministic: a replayed run finds its request instead of filing another.

    The first request of a call has the id of ``(run, call)``; a request filed because the
    call's action changed after that has the id of ``(run, call, action hash)``.
    """
    key = f"wflo-approval:{run_id}:{call_id}" + (f":{action_hash}" if action_hash else "")
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


class ApprovalGuard(Guard):
    """Before a call whose policy applies: find the request for the exact action about to
    run, filing it if there is none, then suspend the run until a decision exists. The
    run's worker is freed; any worker resumes the run when the decision (or the timeout)
    wakes it. Approved: the call runs, with the approver's edited arguments if any, and
    only if the action it computes now has the hash that was approved; a different action
    (the code or its inputs changed in between) asks again with a new request showing both
    actions, or stops the run (``Approval(on_change="stop")``), and the journal records
    ``approval.action_changed`` saying which. Rejected: it raises ``ApprovalRejected`` or
    returns the reason.

    After: nothing (the call's own event records what ran and under which approval).
    """

    def __init__(self, inbox: Inbox, *, requested_by: str) -> None:
        self.inbox = inbox
        self.requested_by = requested_by

    def local(self, call: Call) -> bool:
        return call.meta.get("approval") is None  # a call with no policy is not looked at

    def before(self, call: Call) -> None:
        policy: Approval | None = call.meta.get("approval")
        if policy is None or not policy.applies(call.meta.get("fn"), call.args, call.kwargs):
            return
        ctx = call.run
        _name_arguments(call)
        action = action_of(call.name, call.args, call.kwargs)
        req = self._request(call, policy, action)
        if req.status == "pending" and req.timeout_at and req.timeout_at <= self.inbox.store.now():
            req = self._timeout(call, policy, req)
        if req.status == "pending":
            raise RunSuspended(
                run_id=ctx.run_id,
                reason=f"approval {req.id} ({req.tool})",
                wait={"approval_id": req.id, "wake_at": req.timeout_at, "hint": decide_hint(req)},
            )
        if req.status == "approved":
            # Bound at execution: what runs is the approved action, and it must hash to what
            # was decided (a row edited behind the inbox's back does not run).
            approved = req.decided_action
            approved_hash = req.decision_hash or req.action_hash
            if action_hash(approved) != approved_hash or approved.get("tool") != call.name:
                raise ActionMismatchError(approval_id=req.id, expected=approved_hash, found=action_hash(approved))
            _check_binds(call, req, approved)
            self._record_decision(call, req)
            call.args = tuple(approved.get("args", []))
            call.kwargs = dict(approved.get("kwargs", {}))
            call.event["approval"] = {"id": req.id, "by": req.decided_by, "hash": approved_hash}
            return
        self._record_decision(call, req)
        reason = req.reason or req.status
        if policy.on_reject == "return":
            call.meta["result_override"] = f"Not done: the request was {req.status} by {req.decided_by}: {reason}"
            return
        raise ApprovalRejected(approval_id=req.id, reason=reason, decided_by=req.decided_by)

    def _request(self, call: Call, policy: Approval, action: dict[str, Any]) -> ApprovalRequest:
        """The request for exactly ``action``: found, reopened, or filed now."""
        run_id, call_id = call.run.run_id, call.call_id
        digest = action_hash(action)
        first = self.inbox.find(approval_id_for(run_id, call_id))
        if first is None:
            return self._file(call, policy, approval_id_for(run_id, call_id), action, None)
        target_id = first.id if first.action_hash == digest else approval_id_for(run_id, call_id, digest)
        found = first if first.id == target_id else self.inbox.find(target_id)
        if found is not None and found.status != "superseded":
            # Requests filed for actions the call no longer computes can't be decided usefully.
            self.inbox.supersede(run_id, call_id, keep=found.id)
            return found
        # The action differs from the one last asked about (and perhaps approved): that
        # decision does not cover it.
        earlier = [r for r in self.inbox.for_call(run_id, call_id) if r.status != "superseded"] or [first]
        last = earlier[-1]
        before = {"id": last.id, "action": last.decided_action, "action_hash": last.decision_hash or last.action_hash,
                  "status": last.status}  # fmt: skip
        change = {"approval_id": last.id, "call": call_id, "status": last.status, "decided_hash": before["action_hash"],
                  "action_hash": digest, "action": action}  # fmt: skip
        if policy.on_change == "stop":
            call.run.append([NewEvent("approval.action_changed", {**change, "outcome": "stopped"})])
            stop = ActionMismatchError(approval_id=last.id, expected=before["action_hash"], found=digest)
            call.run.state["stopped"] = stop
            raise RunStopped(run_id=run_id, detector=f"approval {last.id}: the action changed after the request")
        call.run.append([NewEvent("approval.action_changed", {**change, "outcome": "asked_again",
                                                              "new_approval_id": target_id})])  # fmt: skip
        return self._file(call, policy, target_id, action, before)

    def _file(
        self, call: Call, policy: Approval, approval_id: str, action: dict[str, Any], before: dict[str, Any] | None
    ) -> ApprovalRequest:
        # The deadline is on the store's clock, the one every worker and decider compares with.
        timeout_at = self.inbox.store.now(policy.timeout_seconds) if policy.timeout_seconds else None
        message = policy.message or call.meta.get("message") or action_text(action)
        if before is not None:
            message += (
                f" [changed: request {before['id'][:8]} ({before['status']}) was for "
                f"{action_text(before['action'], 120)}]"
            )
        req, created = self.inbox.create(
            approval_id=approval_id, run_id=call.run.run_id, call_id=call.call_id, tool=call.name, message=message,
            action=action, approvers=list(policy.approvers), quorum=policy.quorum, requested_by=self.requested_by,
            timeout_at=timeout_at, on_timeout=policy.on_timeout, escalate_to=list(policy.escalate_to),
            params=params_of(call.meta.get("fn")), supersedes=before,
        )  # fmt: skip
        if created:
            call.run.append([NewEvent("approval.requested", {
                "approval_id": req.id, "call": call.call_id, "tool": call.name, "message": message,
                "action_hash": req.action_hash, "approvers": req.approvers, "quorum": req.quorum,
                "requested_by": req.requested_by, "timeout_at": timeout_at, "rule": describe_rule(policy),
                **({"supersedes": before} if before is not None else {}),
            })])  # fmt: skip
            notify("created", req, self.inbox.store)
        return req

    def _timeout(self, call: Call, policy: Approval, req: ApprovalRequest) -> ApprovalRequest:
        if req.on_timeout == "escalate" and req.escalations == 0:
            deadline = self.inbox.store.now(policy.timeout_seconds) if policy.timeout_seconds else None
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
            "requested_hash": req.action_hash,
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


def _check_binds(call: Call, req: ApprovalRequest, approved: dict[str, Any]) -> None:
    """An edited action must still be a valid call of the function (checked again here, in
    the process that has the function, after the inbox checked it against the stored schema)."""
    fn = call.meta.get("fn")
    if fn is None or not req.decision_action:
        return
    try:
        inspect.signature(fn).bind(*approved.get("args", []), **approved.get("kwargs", {}))
    except TypeError as exc:
        raise ActionMismatchError(
            approval_id=req.id, expected=req.decision_hash, found=f"a call {call.name} cannot take ({exc})"
        ) from None
    except ValueError:  # no signature to check against (some builtins)
        return


def decide_hint(req: ApprovalRequest) -> str:
    """How to decide ``req``, as it really works here (printed where a run waits)."""
    who = ", ".join(req.approvers) or "anyone"
    lines = [
        f"wflo: an approver ({who}; not the requester {req.requested_by}) decides, as themselves "
        f"(WFLO_PRINCIPAL), with `wflo approve {req.id}` or `wflo reject {req.id} --reason ...`",
    ]
    if not settings().require_auth:
        lines.append(
            f"wflo: alone on this machine, for a test: `wflo approve {req.id} --as-self-local` (recorded as a self-approval)"
        )
    return "\n".join(lines)
