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
from ._params import edited_action
from ._policy import action_hash

_COLUMNS = (
    "id, run_id, call_id, tool, message, action, action_hash, approvers, quorum, requested_by, status, "
    "decision_action, decision_hash, reason, decided_by, decided_at, via, timeout_at, on_timeout, "
    "escalate_to, escalations, created_at, updated_at, params, supersedes"
)
DECISIONS = ("approve", "reject")
_ENDED = ("succeeded", "failed", "cancelled", "stopped")


class _Raced(Exception):
    """A concurrent decision changed the rows a transaction meant to close."""


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
        rows = self.store.read(f"SELECT {_COLUMNS} FROM approvals WHERE id = ?", (approval_id,))
        if not rows and len(approval_id) >= 4:
            rows = self.store.read(f"SELECT {_COLUMNS} FROM approvals WHERE id LIKE ? LIMIT 2", (approval_id + "%",))
            rows = rows if len(rows) == 1 else []
        if not rows:
            raise ApprovalNotFoundError(approval_id=approval_id)
        return ApprovalRequest.from_row(rows[0])

    def find(self, approval_id: str) -> ApprovalRequest | None:
        """The request with exactly this id, or ``None``."""
        rows = self.store.read(f"SELECT {_COLUMNS} FROM approvals WHERE id = ?", (approval_id,))
        return ApprovalRequest.from_row(rows[0]) if rows else None

    def for_call(self, run_id: str, call_id: str) -> builtins.list[ApprovalRequest]:
        """Every request filed for one call of a run, oldest first."""
        rows = self.store.read(
            f"SELECT {_COLUMNS} FROM approvals WHERE run_id = ? AND call_id = ? ORDER BY created_at, id",
            (run_id, call_id),
        )
        return [ApprovalRequest.from_row(r) for r in rows]

    def list(
        self, *, status: str | None = "pending", run_id: str | None = None, limit: int = 100
    ) -> builtins.list[ApprovalRequest]:
        sql = f"SELECT {_COLUMNS} FROM approvals"
        params: builtins.list[Any] = []
        where: builtins.list[str] = []
        if status:
            where.append("status = ?")
            params.append(status)
        if run_id:
            where.append("run_id = ?")
            params.append(run_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        return [ApprovalRequest.from_row(r) for r in self.store.read(sql, params)]

    def votes(self, approval_id: str) -> builtins.list[dict[str, Any]]:
        rows = self.store.read(
            "SELECT principal, decision, reason, action_hash, via, at FROM approval_votes WHERE approval_id = ? ORDER BY at",
            (approval_id,),
        )
        return [
            dict(zip(("principal", "decision", "reason", "action_hash", "via", "at"), r, strict=True)) for r in rows
        ]

    # ----------------------------------------------------------------- principals
    def roles_of(self, principal: str) -> set[str]:
        rows = self.store.read("SELECT roles FROM principals WHERE id = ?", (principal,))
        return set(json.loads(rows[0][0])) if rows else set()

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

        rows = self.store.read("SELECT tenant FROM runs WHERE id = ?", (req.run_id,))
        return tenant_scope(rows[0][0] if rows else None)

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
            st.execute(
                cur,
                "UPDATE approvals SET status = 'superseded', updated_at = ? WHERE run_id = ? AND call_id = ? "
                "AND status = 'pending' AND id <> ?",
                (now, run_id, call_id, approval_id),
            )
            st.execute(
                cur,
                "UPDATE approvals SET status = 'pending', updated_at = ? WHERE id = ? AND status = 'superseded'",
                (now, approval_id),
            )
            st.execute(cur, "SELECT 1 FROM approvals WHERE id = ?", (approval_id,))
            if cur.fetchone():
                return False
            st.execute(
                cur,
                f"INSERT INTO approvals ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', NULL, NULL, NULL, NULL, NULL, NULL, ?, ?, ?, 0, ?, ?, ?, ?)",
                (approval_id, run_id, call_id, tool, message, canonical_json(action), action_hash(action),
                 json.dumps(approvers), quorum, requested_by, timeout_at, on_timeout, json.dumps(escalate_to), now, now,
                 canonical_json(params) if params is not None else None,
                 canonical_json(supersedes) if supersedes is not None else None),
            )  # fmt: skip
            return True

        created = self.store.write(txn)
        return self.get(approval_id), created

    def supersede(self, run_id: str, call_id: str, *, keep: str) -> None:
        """Close a call's pending requests other than ``keep`` (for actions it no longer computes)."""
        now = now_iso()
        self.store.write(
            lambda cur: self.store.execute(
                cur,
                "UPDATE approvals SET status = 'superseded', updated_at = ? WHERE run_id = ? AND call_id = ? "
                "AND status = 'pending' AND id <> ?",
                (now, run_id, call_id, keep),
            )
        )

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
            st.execute(cur, f"SELECT status, cancel_requested FROM runs WHERE id = ?{st.for_update}", (req.run_id,))
            run = cur.fetchone()
            st.execute(cur, f"SELECT {_COLUMNS} FROM approvals WHERE id = ?{st.for_update}", (approval_id,))
            cur_req = ApprovalRequest.from_row(cur.fetchone())
            if cur_req.status != "pending":
                raise ApprovalClosedError(approval_id=approval_id, status=cur_req.status)
            if run is not None and (run[0] in _ENDED or run[1]):
                outcome["run_ended"] = run[0] if run[0] in _ENDED else "cancelled"
                return
            # Judged on the store's clock: a decider whose clock runs late cannot slip a
            # decision in after the deadline.
            if cur_req.timeout_at and cur_req.timeout_at < st.now(cur=cur):
                raise ApprovalClosedError(approval_id=approval_id, status="expired (its timeout passed)")
            if principal == cur_req.requested_by and not self_local:
                raise ApprovalForbiddenError(
                    approval_id=approval_id, principal=principal, detail="the requester cannot decide their own request"
                )
            if refusal:
                raise ApprovalForbiddenError(approval_id=approval_id, principal=principal, detail=refusal)
            if expected_hash is not None and expected_hash != cur_req.action_hash:
                raise ActionMismatchError(approval_id=approval_id, expected=cur_req.action_hash, found=expected_hash)
            decided_action = None
            if edited_kwargs is not None:
                decided_action = edited_action(cur_req.action, edited_kwargs, cur_req.params)
            vote_hash = action_hash(decided_action) if decided_action else cur_req.action_hash
            st.execute(
                cur, "SELECT 1 FROM approval_votes WHERE approval_id = ? AND principal = ?", (approval_id, principal)
            )
            if cur.fetchone():
                raise ApprovalForbiddenError(
                    approval_id=approval_id, principal=principal, detail="already voted on this request"
                )
            st.execute(
                cur,
                "INSERT INTO approval_votes (approval_id, principal, decision, reason, action_hash, via, shown, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (approval_id, principal, decision, reason, vote_hash, via, shown, now),
            )
            st.execute(cur, "SELECT decision, action_hash FROM approval_votes WHERE approval_id = ?", (approval_id,))
            votes = cur.fetchall()
            approvals = [v for v in votes if v[0] == "approve"]
            status = "pending"
            if decision == "reject":
                status = "rejected"
            elif len({v[1] for v in approvals}) > 1:
                raise ActionMismatchError(approval_id=approval_id, expected=approvals[0][1], found=vote_hash)
            elif len(approvals) >= cur_req.quorum or self_local:
                status = "approved"
            if status != "pending":
                st.execute(
                    cur,
                    "UPDATE approvals SET status = ?, decision_action = ?, decision_hash = ?, reason = ?, decided_by = ?, "
                    "decided_at = ?, via = ?, updated_at = ? WHERE id = ?",
                    (status, canonical_json(decided_action) if decided_action else None, vote_hash, reason, principal,
                     now, via, now, approval_id),
                )  # fmt: skip
                # Wake the run, whether it is already waiting or still on its way there: in
                # this transaction, so workers hear of it at this commit (not two commits later).
                st.wake(cur, cur_req.run_id, now)
            outcome.update(status=status, vote_hash=vote_hash, votes=len(votes))

        self.store.write(txn)
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
                marks = ", ".join("?" for _ in ids)
                self.store.execute(
                    cur,
                    "UPDATE approvals SET status = 'cancelled', reason = ?, decided_by = ?, decided_at = ?, "
                    f"via = 'run', updated_at = ? WHERE status = 'pending' AND id IN ({marks})",
                    (reason, by, at, at, *ids),
                )
                if cur.rowcount != len(ids):
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
            self.store.execute(
                cur,
                "UPDATE approvals SET status = ?, reason = ?, decided_by = ?, decided_at = ?, via = 'policy', updated_at = ? "
                "WHERE id = ? AND status = 'pending' AND timeout_at IS NOT NULL AND timeout_at <= ?",
                (status, reason, by, now, now, approval_id, now),
            )
            return bool(cur.rowcount)

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
            lambda cur: self.store.execute(
                cur,
                "UPDATE approvals SET approvers = ?, timeout_at = ?, escalations = escalations + 1, updated_at = ? WHERE id = ? AND status = 'pending'",
                (json.dumps(approvers), timeout_at, now, approval_id),
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
