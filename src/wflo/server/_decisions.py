"""Decisions: the approvals inbox and decide, budgets and spend (the control plane's "act" half)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from .._errors import WfloError
from ..approvals import Inbox
from ..auth import GLOBAL, Access, covers, tenant_scope
from ..cost._api import ledger
from ..cost._ledger import usd_str
from ._routes import Router, body_scope, client_address, tenant_query, who_of


class DecideBody(BaseModel):
    decision: str
    reason: str | None = None
    action_hash: str | None = None
    args: dict[str, Any] | None = None


class BudgetBody(BaseModel):
    scope: str
    usd: str
    period: str = "none"
    max_reservation_usd: str | None = None


def register(router: Router) -> None:
    access = router.access

    @router.route("GET", "/api/v1/approvals", permission="approvals:read", scope=tenant_query)
    def list_approvals(request: Request, status: str = "pending", tenant: str | None = None) -> list[dict[str, Any]]:
        inbox = Inbox(access.store)
        wanted = tenant_scope(tenant)
        tenants = dict(access.store.read("SELECT id, tenant FROM runs"))
        return [
            _approval(r)
            for r in inbox.list(status=None if status == "all" else status, limit=500)
            if covers(wanted, tenant_scope(tenants.get(r.run_id)))
        ]

    async def approval_scope(request: Request, acc: Access) -> str:
        rows = await run_in_threadpool(
            acc.store.read,
            "SELECT r.tenant FROM approvals a LEFT JOIN runs r ON r.id = a.run_id WHERE a.id = ?",
            (request.path_params["approval_id"],),
        )
        return tenant_scope(rows[0][0] if rows else None)

    @router.route("GET", "/api/v1/approvals/{approval_id}", permission="approvals:read", scope=approval_scope)
    def get_approval(request: Request, approval_id: str) -> dict[str, Any]:
        return _approval(Inbox(access.store).get(approval_id))

    @router.route("POST", "/api/v1/approvals/{approval_id}/decide", permission="approvals:decide", scope=approval_scope)
    def decide(request: Request, approval_id: str, body: DecideBody) -> dict[str, Any]:
        who = who_of(request)
        inbox = Inbox(access.store)
        try:
            done = inbox.decide(
                approval_id, body.decision, principal=who.id, reason=body.reason, expected_hash=body.action_hash,
                edited_kwargs=body.args, via=who.via, authenticated=True,
            )  # fmt: skip
        except WfloError as exc:
            if exc.code == "forbidden":
                access.refuse(who, "approvals:decide", GLOBAL, str(exc), remote=client_address(request))
            raise
        return _approval(done)

    async def budget_scope(request: Request, acc: Access) -> str:
        # A tenant's budget belongs to that tenant; workflow, agent, project and global limits
        # cut across tenants, so only a global grant may set them.
        scope = str(await body_scope(request, acc))
        return scope if scope.startswith("tenant:") else GLOBAL

    @router.route("GET", "/api/v1/budgets", permission="budgets:read", scope=tenant_query)
    def list_budgets(request: Request, tenant: str | None = None) -> list[dict[str, Any]]:
        wanted = tenant_scope(tenant)
        return [
            _budget(u) for u in ledger().usage() if covers(wanted, u.scope if u.scope.startswith("tenant:") else GLOBAL)
        ]

    @router.route("PUT", "/api/v1/budgets", permission="budgets:write", scope=budget_scope)
    def set_budget(request: Request, body: BudgetBody) -> dict[str, Any]:
        who = who_of(request)
        lim = ledger().set_limit(
            body.scope, body.usd, period=body.period, max_reservation_usd=body.max_reservation_usd, by=who.id,
            via=who.via,
        )  # fmt: skip
        return {"scope": lim.scope, "limit_usd": usd_str(lim.limit), "period": lim.period}


def _approval(r: Any) -> dict[str, Any]:
    keys = ("id", "run_id", "tool", "message", "action", "action_hash", "status", "approvers", "quorum",
            "requested_by", "decided_by", "reason", "via", "created_at", "decided_at")  # fmt: skip
    return {k: getattr(r, k) for k in keys}


def _budget(u: Any) -> dict[str, Any]:
    return {
        "scope": u.scope, "period": u.period, "period_start": u.period_start, "limit_usd": usd_str(u.limit),
        "spent_usd": usd_str(u.spent), "reserved_usd": usd_str(u.reserved),
    }  # fmt: skip
