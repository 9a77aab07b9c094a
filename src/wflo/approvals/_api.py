"""``wflo.approvals`` and ``wflo.approval(...)``: decide requests, and ask inline."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._config import get_store, settings
from .._errors import ApprovalForbiddenError, UserError
from ..engine import Call, aguarded_call, current_run, guarded_call
from ._inbox import ApprovalRequest, Inbox
from ._policy import Approval


def inbox() -> Inbox:
    return Inbox(get_store())


class Approvals:
    """The approval inbox of the configured store, deciding as the configured principal
    (``WFLO_PRINCIPAL`` locally; the server authenticates its users)."""

    def list(
        self, *, status: str | None = "pending", mine: bool = False, run_id: str | None = None
    ) -> builtins.list[ApprovalRequest]:
        """Requests (pending by default); ``mine``: only those the current principal may decide."""
        box = inbox()
        found = box.list(status=status, run_id=run_id)
        if mine:
            me = settings().principal
            found = [r for r in found if r.requested_by != me and box.may_decide(r, me)]
        return found

    def get(self, approval_id: str) -> ApprovalRequest:
        return inbox().get(approval_id)

    def decide(
        self,
        approval_id: str,
        decision: str,
        *,
        reason: str | None = None,
        args: dict[str, Any] | None = None,
        action_hash: str | None = None,
        principal: str | None = None,
        via: str = "api",
        shown: str | None = None,
        self_local: bool = False,
    ) -> ApprovalRequest:
        """Approve or reject a request.

        Args:
            decision: ``"approve"`` or ``"reject"`` (a rejection needs a ``reason``).
            args: approve with these keyword arguments changed (a new action hash).
            action_hash: the hash of the action the decider was shown; the decision is
                refused if the request is for another action.
            principal: who decides (default: the configured principal).
            via: where the decision came from (``cli``, ``api``, ``panel``).
            self_local: decide your own request alone, in single-user local mode (recorded
                as such with the OS user and ``via: local``; refused when ``require_auth``).
        """
        if settings().require_auth:
            # Direct store access cannot prove who is speaking: where authentication is
            # required, decisions go through the server (recorded refusal).
            from ..auth import access

            who = access().local(principal or settings().principal)
            access().refuse(who, "approvals:decide", "*", "local decisions are refused (require_auth)")
            raise ApprovalForbiddenError(
                approval_id=approval_id, principal=who.id,
                detail="local decisions are refused where authentication is required (require_auth is set): "
                "decide through the server (wflo login)",
            )  # fmt: skip
        return inbox().decide(
            approval_id, decision, principal=principal or settings().principal, reason=reason,
            expected_hash=action_hash, edited_kwargs=args, via=via, shown=shown, self_local=self_local,
        )  # fmt: skip

    def approve(self, approval_id: str, **kwargs: Any) -> ApprovalRequest:
        return self.decide(approval_id, "approve", **kwargs)

    def reject(self, approval_id: str, *, reason: str, **kwargs: Any) -> ApprovalRequest:
        return self.decide(approval_id, "reject", reason=reason, **kwargs)

    def grant(self, principal: str, role: str, *, scope: str = "*") -> set[str]:
        """Give a principal a role (``wflo.approvals.grant("user:alice", "finance")``).

        The configured principal needs ``admin`` (see ``wflo.auth``); refused (and recorded)
        when ``require_auth`` is set, since a local process cannot prove who it is.
        """
        from ..auth import access

        access().require_local("grants:write", scope)
        return inbox().grant(principal, role, by=settings().principal, scope=scope)


approvals = Approvals()


@dataclass(frozen=True, slots=True)
class Decision:
    """What an inline ``wflo.approval(...)`` returns when approved."""

    approved: bool
    data: Any


def approval(
    message: str,
    *,
    data: Any = None,
    approvers: Sequence[str] = (),
    quorum: int = 1,
    timeout: float | str | None = "24h",
    on_timeout: str = "reject",
    escalate_to: Sequence[str] = (),
) -> Decision:
    """Pause the run until a person approves ``message`` (with ``data``, which they may edit).

    Must be called inside a workflow. Raises ``ApprovalRejected`` on rejection.
    ``decision = wflo.approval("Delete 512 rows from prod.customers?", data={...}, approvers=["role:dba"])``
    In an ``async def`` workflow use ``await wflo.aapproval(...)``, which keeps the loop free.
    """
    call = _approval_call("approval", message, data, approvers, quorum, timeout, on_timeout, escalate_to)
    result = guarded_call(call, lambda message, data: {"approved": True, "data": data})
    return Decision(approved=bool(result["approved"]), data=result["data"])


async def aapproval(
    message: str,
    *,
    data: Any = None,
    approvers: Sequence[str] = (),
    quorum: int = 1,
    timeout: float | str | None = "24h",
    on_timeout: str = "reject",
    escalate_to: Sequence[str] = (),
) -> Decision:
    """The async twin of :func:`approval` (same arguments, same journal, same request).

    Finding or filing the request, and recording the decision, run on the store's threads in
    the run's order (``Store.off_loop``), so the event loop never waits for the store. The
    wait for a person is the run's suspension, as with ``approval``: ``arun`` waits for the
    decision without blocking the loop.
    ``decision = await wflo.aapproval("Refund $1,200?", data={...}, approvers=["role:finance"])``
    """
    call = _approval_call("aapproval", message, data, approvers, quorum, timeout, on_timeout, escalate_to)

    async def approved(message: str, data: Any) -> dict[str, Any]:
        return {"approved": True, "data": data}

    result = await aguarded_call(call, approved)
    return Decision(approved=bool(result["approved"]), data=result["data"])


def _approval_call(
    caller: str,
    message: str,
    data: Any,
    approvers: Sequence[str],
    quorum: int,
    timeout: float | str | None,
    on_timeout: str,
    escalate_to: Sequence[str],
) -> Call:
    ctx = current_run()
    if ctx is None:
        raise UserError(f"wflo.{caller}() pauses a run, so it must be called inside a @wflo.workflow")
    policy = Approval(  # takes one "role:x" as well as a list, as @wflo.tool's Approval does
        approvers=approvers,
        quorum=quorum,
        timeout=timeout,
        on_timeout=on_timeout,
        escalate_to=escalate_to,
        message=message,
    )
    # Both twins journal the same call ("approval"), so a run may move between them.
    return Call(
        kind="approval",
        name="approval",
        args=(),
        kwargs={"message": message, "data": data},
        run=ctx,
        meta={"approval": policy, "message": message},
    )
