"""The approval inbox: requests, votes and decisions, kept in the store.

A decision is taken in one write transaction that locks the request's row, so any number of
concurrent deciders (CLI, API, several machines) produce exactly one outcome. Every vote and
decision is also an event on the system audit chain with who, when, from where and what they
were shown; the run's own chain records the decision when the run resumes.
"""

from __future__ import annotations

import builtins
import getpass
import json
import os
from dataclasses import dataclass
from typing import Any

from .._config import settings
from .._errors import (
    ActionMismatchError,
    ApprovalClosedError,
    ApprovalForbiddenError,
    ApprovalNotFoundError,
    UserError,
)
from ..store import NewEvent, Store, canonical_json, now_iso
from . import _tables as tables
from ._params import edited_action
from ._policy import action_hash

DECISIONS = ("approve", "reject")
_ENDED = ("succeeded", "failed", "cancelled", "stopped")


class _Raced(Exception):
    """A concurrent decision changed the rows a transaction meant to close."""


def _by_principal(pairs: builtins.list[tuple[str, str]]) -> dict[str, set[str]]:
    makers: dict[str, set[str]] = {}
    for principal, maker in pairs:
        makers.setdefault(principal, set()).add(maker)
    return makers


def _people(principal: str, makers: dict[str, set[str]]) -> set[str]:
    """Who answers for ``principal``: itself, and whoever made its API tokens (a service
    account is its makers' hands)."""
    return {principal} | makers.get(principal, set())


def _conflict(principal: str, requester: str, voters: builtins.list[str], makers: dict[str, set[str]]) -> str | None:
    """Why ``principal`` is the requester or an earlier voter under another name, or ``None``.

    The same principal is left to the callers' own checks (their messages say it plainly)."""
    mine = _people(principal, makers)
    shared = sorted(mine & _people(requester, makers))
    if principal != requester and shared:
        return (
            f"{principal} and the requester {requester} act for the same person ({', '.join(shared)}), "
            "who cannot approve their own request"
        )
    for voter in voters:
        shared = sorted(mine & _people(voter, makers))
        if voter != principal and shared:
            return (
                f"{principal} and {voter}, who voted already, act for the same person ({', '.join(shared)}): "
                "a quorum counts people, not accounts"
            )
    return None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in this environment (some containers)
        return f"uid:{os.getuid()}"


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One request in the inbox."""

    id: str
    run_id: str
    call_id: str
    tool: str
    message: str
    action: dict[str, Any]
    action_hash: str
    approvers: list[str]
    quorum: int
    requested_by: str
    status: str  # pending | approved | rejected | expired | superseded | cancelled
    decision_action: dict[str, Any] | None
    decision_hash: str | None
    reason: str | None
    decided_by: str | None
    decided_at: str | None
    via: str | None
    timeout_at: str | None
    on_timeout: str
    escalate_to: list[str]
    escalations: int
    created_at: str
    updated_at: str
    params: dict[str, Any] | None = None
    """The tool's parameters (JSON schema) an edit is checked against; ``None``: not known."""
    supersedes: dict[str, Any] | None = None
    """The request this one replaced because the action changed (``id``, ``action``,
    ``action_hash``, ``status``), so the approver sees both actions."""

    @property
    def decided_action(self) -> dict[str, Any]:
        """The action that runs if approved: the approver's edit, else the requested action."""
        return self.decision_action or self.action

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> ApprovalRequest:
        return cls(
            id=r[0], run_id=r[1], call_id=r[2], tool=r[3], message=r[4], action=json.loads(r[5]),
            action_hash=r[6], approvers=json.loads(r[7]), quorum=int(r[8]), requested_by=r[9], status=r[10],
            decision_action=json.loads(r[11]) if r[11] else None, decision_hash=r[12], reason=r[13],
            decided_by=r[14], decided_at=r[15], via=r[16], timeout_at=r[17], on_timeout=r[18],
            escalate_to=json.loads(r[19]) if r[19] else [], escalations=int(r[20]), created_at=r[21], updated_at=r[22],
            params=json.loads(r[23]) if r[23] else None, supersedes=json.loads(r[24]) if r[24] else None,
        )  # fmt: skip


class Inbox:
    """Approval requests of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ----------------------------------------------------------------- reading
    def get(self, approval_id: str) -> ApprovalRequest:
        """The request with this id, or with the only id this prefix (4+ characters) starts."""
        row = tables.request(self.store, approval_id)
        if row is None and len(approval_id) >= 4:
            rows = tables.requests_by_prefix(self.store, approval_id)
            if len(rows) > 1:
                message = f"{approval_id!r} is the start of more than one approval request id: give more of it"
                raise ApprovalNotFoundError(message, approval_id=approval_id)
            row = rows[0] if rows else None
        if row is None:
            raise ApprovalNotFoundError(approval_id=approval_id)
        return ApprovalRequest.from_row(row)

    def find(self, approval_id: str) -> ApprovalRequest | None:
        """The request with exactly this id, or ``None``."""
        row = tables.request(self.store, approval_id)
        return ApprovalRequest.from_row(row) if row else None

    def for_call(self, run_id: str, call_id: str) -> builtins.list[ApprovalRequest]:
        """Every request filed for one call of a run, oldest first."""
        return [ApprovalRequest.from_row(r) for r in tables.requests_for_call(self.store, run_id, call_id)]

    def list(
        self, *, status: str | None = "pending", run_id: str | None = None, limit: int = 100
    ) -> builtins.list[ApprovalRequest]:
        rows = tables.requests(self.store, status=status, run_id=run_id, limit=limit)
        return [ApprovalRequest.from_row(r) for r in rows]

    def with_runs(
        self, *, status: str | None = "pending", tenant: str | None = None, limit: int = 200
    ) -> builtins.list[tuple[ApprovalRequest, str | None, str | None]]:
        """Requests newest first, each with its run's tenant and workflow (``None`` for a run
        that is gone); ``status=None``: any; ``tenant``: only that tenant's runs."""
        rows = tables.requests_with_runs(self.store, status=status, tenant=tenant, limit=limit)
        return [(ApprovalRequest.from_row(r[:-2]), r[-2], r[-1]) for r in rows]

    def tenant_of(self, approval_id: str) -> str | None:
        """The tenant of the run a request belongs to (``None``: none, or no such request)."""
        return tables.tenant_of_request(self.store, approval_id)

    def summaries(self, ids: builtins.list[str]) -> builtins.list[dict[str, Any]]:
        """``id``, ``run_id``, ``status``, ``tool`` and ``tenant`` of each of ``ids`` that exists."""
        keys = ("id", "run_id", "status", "tool", "tenant")
        return [dict(zip(keys, r, strict=True)) for r in tables.summaries(self.store, ids)]

    def pending_by_tool(self) -> dict[str, int]:
        """How many requests wait for a decision, by tool."""
        return tables.pending_by_tool(self.store)

    def votes(self, approval_id: str) -> builtins.list[dict[str, Any]]:
        return [
            dict(zip(("principal", "decision", "reason", "action_hash", "via", "at"), r, strict=True))
            for r in tables.votes(self.store, approval_id)
        ]

    # ----------------------------------------------------------------- principals
    def roles_of(self, principal: str) -> set[str]:
        return tables.roles_of(self.store, principal)

    def principals(self) -> builtins.list[tuple[str, builtins.list[str], str, str]]:
        """``(principal, role names, created_at, updated_at)`` of every principal, by id: the
        roles approval routing reads (``wflo.auth`` keeps them in step with its grants)."""
        return tables.principals(self.store)

    def grant(self, principal: str, role: str, *, by: str, scope: str = "*") -> set[str]:
        """Give ``principal`` (``user:alice``) the ``role`` (``finance`` or ``role:finance``).

        ``by`` acts locally and needs ``admin`` (``wflo.auth``: the first local grant on a
        store without an admin makes ``by`` the admin). Returns the principal's role names.
        """
        from ..auth import Access

        access = Access(self.store)
        access.grant(principal, role, scope, who=access.local(by))
        return self.roles_of(principal)

    def _scope_of(self, req: ApprovalRequest) -> str:
        from ..auth import tenant_scope

        return tenant_scope(tables.run_tenant(self.store, req.run_id))

    def may_decide(self, req: ApprovalRequest, principal: str, *, authenticated: bool = False) -> bool:
        return self.why_not(req, principal, authenticated=authenticated) is None

    def why_not(self, req: ApprovalRequest, principal: str, *, authenticated: bool = False) -> str | None:
        """Why ``principal`` may not decide ``req`` (``None``: they may).

        A role counts only where it reaches the run's tenant. For an ``authenticated``
        decider (the server) it also does not count when the requester granted it: a
        requester cannot hand their own request to a sock puppet they made an approver
        (issue 16). Local mode trusts ``WFLO_PRINCIPAL`` anyway (anyone with the store could
        name themselves the admin), so there the rule would prove nothing; ``require_auth``
        turns local decisions off.
        """
        if tables.disabled(self.store, principal):
            return f"{principal} is disabled"
        clash = self.conflict(req, principal)
        if clash:
            return clash
        if not req.approvers or principal in req.approvers:
            return None
        from ..auth import Access, covers

        wanted = {a[5:] for a in req.approvers if a.startswith("role:")}
        grants = Access(self.store).grants(principal)
        scope = self._scope_of(req)
        usable = [g for g in grants if g.role in wanted and covers(g.scope, scope)]
        if any(g.granted_by != req.requested_by or not authenticated for g in usable):
            return None
        # Roles held from before grants were recorded with their granter (no row in role_grants).
        if (self.roles_of(principal) - {g.role for g in grants}) & wanted:
            return None
        if usable:
            return f"its role was granted by the requester {req.requested_by}, who cannot approve their own request"
        return f"not one of the approvers {', '.join(req.approvers)}"

    def conflict(self, req: ApprovalRequest, principal: str) -> str | None:
        """Why ``principal`` is the requester or an earlier voter under another name (``None``:
        it is not): a service account acts for the people who made its API tokens."""
        makers = _by_principal(tables.token_makers(self.store, req.id, [principal, req.requested_by]))
        return _conflict(principal, req.requested_by, [v["principal"] for v in self.votes(req.id)], makers)

    # ----------------------------------------------------------------- writing
    def create(
        self,
        *,
        approval_id: str,
        run_id: str,
        call_id: str,
        tool: str,
        message: str,
        action: dict[str, Any],
        approvers: builtins.list[str],
        quorum: int,
        requested_by: str,
        timeout_at: str | None,
        on_timeout: str,
        escalate_to: builtins.list[str],
        params: dict[str, Any] | None = None,
        supersedes: dict[str, Any] | None = None,
    ) -> tuple[ApprovalRequest, bool]:
        """Create the request (idempotent on ``approval_id``); returns it and whether it is new.

        The call's other pending requests (for actions it no longer computes) are closed as
        ``superseded`` in the same transaction, and a superseded request for this very action
        is reopened, so a call has at most one pending request: the one for what would run.
        """
        now = now_iso()

        def txn(cur: Any) -> bool:
            st = self.store
            tables.supersede_pending(st, cur, run_id, call_id, keep=approval_id, now=now)
            tables.reopen(st, cur, approval_id, now=now)
            if tables.exists(st, cur, approval_id):
                return False
            tables.insert(
                st, cur, approval_id=approval_id, run_id=run_id, call_id=call_id, tool=tool, message=message,
                action=canonical_json(action), action_hash=action_hash(action), approvers=approvers, quorum=quorum,
                requested_by=requested_by, timeout_at=timeout_at, on_timeout=on_timeout, escalate_to=escalate_to,
                params=canonical_json(params) if params is not None else None,
                supersedes=canonical_json(supersedes) if supersedes is not None else None, now=now,
            )  # fmt: skip
            return True

        created = self.store.write(txn)
        return self.get(approval_id), created

    def supersede(self, run_id: str, call_id: str, *, keep: str) -> None:
        """Close a call's pending requests other than ``keep`` (for actions it no longer computes)."""
        now = now_iso()
        self.store.write(lambda cur: tables.supersede_pending(self.store, cur, run_id, call_id, keep=keep, now=now))

    def preview(self, approval_id: str, edits: dict[str, Any] | None) -> tuple[ApprovalRequest, dict[str, Any]]:
        """The request and the action an approval with ``edits`` would decide (validated)."""
        req = self.get(approval_id)
        if edits is None:
            return req, req.action
        return req, edited_action(req.action, edits, req.params)

    def decide(
        self,
        approval_id: str,
        decision: str,
        *,
        principal: str,
        reason: str | None = None,
        expected_hash: str | None = None,
        edited_kwargs: dict[str, Any] | None = None,
        via: str = "api",
        shown: str | None = None,
        self_local: bool = False,
        authenticated: bool = False,
    ) -> ApprovalRequest:
        """Record ``principal``'s vote and, when it settles the request, the decision.

        ``expected_hash`` binds the vote to the action the decider saw; ``edited_kwargs``
        approves the call with changed arguments (validated against the tool's signature; the
        edited action and its hash are what is stored, shown and run). ``self_local``: the
        requester decides their own request alone, in single-user local mode (refused when
        ``require_auth`` is set). Raises when the request is unknown, closed, expired, its run
        ended or is being cancelled, the principal may not decide it (or requested it), or
        the hash does not match. ``authenticated``: the server vouches for ``principal``
        (roles granted by the requester then do not count).
        """
        if decision not in DECISIONS:
            raise UserError(f"decision must be 'approve' or 'reject', got {decision!r}")
        if decision == "reject" and not reason:
            raise UserError("a rejection needs a reason (it is returned to the agent)")
        if edited_kwargs is not None and decision != "approve":
            raise UserError("edited arguments go with an approval")
        req, _ = self.preview(approval_id, edited_kwargs)  # a bad edit fails before anything is written
        approval_id = req.id
        os_user = None
        if self_local:
            if settings().require_auth:
                raise ApprovalForbiddenError(
                    approval_id=approval_id, principal=principal,
                    detail="local self-approval is off where authentication is required (require_auth is set)",
                )  # fmt: skip
            if principal != req.requested_by:
                raise ApprovalForbiddenError(
                    approval_id=approval_id, principal=principal,
                    detail=f"--as-self-local decides only your own requests (this one was requested by {req.requested_by})",
                )  # fmt: skip
            via, os_user = "local", _os_user()
        now = now_iso()
        refusal = None if self_local else self.why_not(req, principal, authenticated=authenticated)
        outcome: dict[str, Any] = {}

        def txn(cur: Any) -> None:
            st = self.store
            # The run's row first (the order every writer of both rows uses): a cancel that
            # committed before us is seen here, one that comes after waits for our decision.
            run, row, earlier, store_now, makers, off = tables.lock_for_decision(
                st, cur, req.run_id, approval_id, [principal, req.requested_by]
            )
            if row is None:  # removed meanwhile (a store restored from a backup)
                raise ApprovalNotFoundError(approval_id=approval_id)
            cur_req = ApprovalRequest.from_row(row)
            if cur_req.status != "pending":
                raise ApprovalClosedError(approval_id=approval_id, status=cur_req.status)
            if run is not None and (run[0] in _ENDED or run[1]):
                outcome["run_ended"] = run[0] if run[0] in _ENDED else "cancelled"
                return
            # Judged on the store's clock: a decider whose clock runs late cannot slip a
            # decision in after the deadline.
            if cur_req.timeout_at and cur_req.timeout_at < store_now:
                raise ApprovalClosedError(approval_id=approval_id, status="expired (its timeout passed)")
            if off:  # read under its lock: a disable written meanwhile was waited for
                raise ApprovalForbiddenError(
                    approval_id=approval_id, principal=principal, detail=f"{principal} is disabled"
                )
            if principal == cur_req.requested_by and not self_local:
                raise ApprovalForbiddenError(
                    approval_id=approval_id, principal=principal, detail="the requester cannot decide their own request"
                )
            # Read under the request's lock: a token made by the requester, or by someone who
            # voted a moment ago, is refused even when both votes race.
            voters = [v for v, _, _ in earlier]
            clash = None if self_local else _conflict(principal, req.requested_by, voters, _by_principal(makers))
            why = refusal
            if not self_local and (cur_req.approvers, cur_req.escalations) != (req.approvers, req.escalations):
                # Escalated since it was read: judged on the approvers it has now (the ones it
                # had are past their deadline), not on those the decider was checked against.
                why = self.why_not(cur_req, principal, authenticated=authenticated)
            if clash or why:
                raise ApprovalForbiddenError(approval_id=approval_id, principal=principal, detail=clash or why)
            if expected_hash is not None and expected_hash != cur_req.action_hash:
                raise ActionMismatchError(approval_id=approval_id, expected=cur_req.action_hash, found=expected_hash)
            decided_action = None
            if edited_kwargs is not None:
                decided_action = edited_action(cur_req.action, edited_kwargs, cur_req.params)
            vote_hash = action_hash(decided_action) if decided_action else cur_req.action_hash
            if any(voter == principal for voter, _, _ in earlier):
                raise ApprovalForbiddenError(
                    approval_id=approval_id, principal=principal, detail="already voted on this request"
                )
            tables.insert_vote(
                st, cur, approval_id, principal, decision=decision, reason=reason, action_hash=vote_hash, via=via,
                shown=shown, at=now,
            )  # fmt: skip
            # The votes read under the request's lock, and ours: nobody else can vote meanwhile.
            votes = [(d, h) for _, d, h in earlier] + [(decision, vote_hash)]
            approvals = [v for v in votes if v[0] == "approve"]
            status = "pending"
            if decision == "reject":
                status = "rejected"
            elif len({v[1] for v in approvals}) > 1:
                raise ActionMismatchError(approval_id=approval_id, expected=approvals[0][1], found=vote_hash)
            elif len(approvals) >= cur_req.quorum or self_local:
                status = "approved"
            if status != "pending":
                tables.settle(
                    st, cur, approval_id, status=status,
                    decision_action=canonical_json(decided_action) if decided_action else None,
                    decision_hash=vote_hash, reason=reason, by=principal, via=via, at=now,
                )  # fmt: skip
                # Wake the run, whether it is already waiting or still on its way there: in
                # this transaction, so workers hear of it at this commit (not two commits later).
                st.wake(cur, cur_req.run_id, now)
            outcome.update(status=status, vote_hash=vote_hash, votes=len(votes))

        # Pipelined on PostgreSQL: the locks, the votes and the clock are one round trip, the
        # writes, the wake-up and the commit another.
        self.store.write_batch(txn)
        if "run_ended" in outcome:
            ended = outcome["run_ended"]
            self.close_for_run(req.run_id, by="system:run-ended", reason=f"its run was {ended}")
            raise ApprovalClosedError(approval_id=approval_id, status=f"cancelled (its run {req.run_id} was {ended})")
        kind = "approval.decided" if outcome["status"] != "pending" else "approval.voted"
        data = {
            "approval_id": approval_id, "run_id": req.run_id, "decision": decision, "status": outcome["status"],
            "by": principal, "via": via, "reason": reason, "action_hash": outcome["vote_hash"], "shown": shown,
            "votes": outcome["votes"], "quorum": req.quorum,
        }  # fmt: skip
        if self_local:
            # Single-user local mode: nobody else checked this decision; the record says so.
            data.update(self_local=True, os_user=os_user)
        self.store.append_system([NewEvent(kind, data)])
        return self.get(approval_id)

    def close_for_run(self, run_id: str, *, by: str, reason: str) -> builtins.list[str]:
        """Cancel the pending requests of a run that ended (or is being cancelled).

        The closures and their ``approval.cancelled`` events on the system chain are written
        in one transaction. Returns the ids closed.
        """
        for _ in range(5):
            pending = [r.id for r in self.list(status="pending", run_id=run_id, limit=1000)]
            if not pending:
                return []
            now = now_iso()

            def op(cur: Any, ids: builtins.list[str] = pending, at: str = now) -> None:
                if tables.cancel_pending(self.store, cur, ids, reason=reason, by=by, at=at) != len(ids):
                    raise _Raced  # one was decided meanwhile: roll back, look again

            events = [
                NewEvent("approval.cancelled", {"approval_id": i, "run_id": run_id, "by": by, "reason": reason})
                for i in pending
            ]
            try:
                self.store.append_system(events, ops=[op])
            except _Raced:
                continue
            return pending
        return []

    def close(self, approval_id: str, status: str, *, by: str, reason: str) -> ApprovalRequest:
        """Close a pending request by policy once its timeout has passed on the store's clock:
        ``approved``, ``rejected`` or ``expired``. Before the deadline nothing changes (a worker
        whose clock runs ahead cannot time a request out early)."""

        def txn(cur: Any) -> bool:
            now = self.store.now(cur=cur)
            return tables.close_due(self.store, cur, approval_id, status=status, reason=reason, by=by, now=now)

        if self.store.write(txn):
            self.store.append_system(
                [
                    NewEvent(
                        "approval.expired", {"approval_id": approval_id, "status": status, "by": by, "reason": reason}
                    )
                ]
            )
        return self.get(approval_id)

    def escalate(self, approval_id: str, approvers: builtins.list[str], timeout_at: str | None) -> ApprovalRequest:
        now = now_iso()
        self.store.write(
            lambda cur: tables.escalate(
                self.store, cur, approval_id, approvers=approvers, timeout_at=timeout_at, now=now
            )
        )
        self.store.append_system(
            [
                NewEvent(
                    "approval.escalated", {"approval_id": approval_id, "approvers": approvers, "timeout_at": timeout_at}
                )
            ]
        )
        return self.get(approval_id)
