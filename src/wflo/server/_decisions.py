"""Decisions: the approvals inbox and decide, costs and budgets, and the audit record.

Approvals: a request's ``ETag`` is its action hash, and a decision must send it back
(``If-Match``, or ``action_hash`` in the body): a decider who was shown another action gets
``412 Precondition Failed`` and nothing is recorded. Of two deciders racing with the same hash
one wins; the other gets ``409 approval_closed``.

Costs are read from the ledger's spend book (``wflo.cost._spend``); budgets from the ledger.
A tenant's grant sees its tenant's runs and its tenant's budgets only.

Audit routes reuse ``wflo.audit`` (verify, export, report) and are global: the system chain
holds every tenant's decisions, so only a global ``audit:read`` grant reaches them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import Header, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from ..approvals import ApprovalRequest, Inbox
from ..audit import build_report, export, parse_when, render_html, verify_all, verify_book, verify_checkpoint
from ..auth import GLOBAL, Access, Principal, covers, tenant_scope
from ..cost import Ledger, budget_alerted, budget_periods, spend, top_runs, usd_str
from ..errors import UserError, WfloError
from ..store import TYPE_INDEXED, now_iso
from ._panel import page_route
from ._routes import Router, body_scope, client_address, tenant_query, who_of

STATUSES = ("pending", "approved", "rejected", "expired", "superseded", "cancelled", "all")
_REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


class DecideBody(BaseModel):
    decision: str = Field(description="approve, reject (needs a reason) or edit (approve with changed args)")
    reason: str | None = None
    action_hash: str | None = Field(None, description="the hash of the action you were shown (or send If-Match)")
    args: dict[str, Any] | None = Field(None, description="keyword arguments to change (edit)")


class BudgetBody(BaseModel):
    scope: str
    usd: str
    period: str = "none"
    max_reservation_usd: str | None = None


class VerifyBody(BaseModel):
    since: str | None = Field(None, description="only chains with events at or after this (YYYY-MM-DD, ISO, 30d)")
    checkpoint: dict[str, Any] | None = Field(None, description="a signed checkpoint (JSON) the store must extend")
    spend_book: bool = Field(
        True,
        description="also check the spend book against the chained journals (with since: the runs with events "
        "since then and those with book rows of that hour or later)",
    )


class ExportBody(BaseModel):
    since: str | None = None
    run: str | None = None
    format: str = "jsonl"


def register(router: Router) -> None:
    _approvals(router)
    _costs(router)
    _audit(router)
    page_route(router, "/approvals", "Approvals", script="approvals.js", body="<div id='approvals'></div>")
    page_route(router, "/costs", "Costs", script="costs.js", body="<div id='costs'></div>")
    page_route(router, "/audit", "Audit", script="audit.js", body="<div id='audit'></div>")


# --------------------------------------------------------------------------- approvals
def _approvals(router: Router) -> None:
    access = router.access

    @router.route("GET", "/api/v1/approvals", permission="approvals:read", scope=tenant_query)
    def list_approvals(
        request: Request, status: Annotated[str, Query(json_schema_extra={"enum": list(STATUSES)})] = "pending",
        tenant: str | None = None, mine: bool = False, limit: int = 200,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The inbox: requests by status (``all``: any), of one tenant's runs, or only those
        routed to me (``mine=true``: I may decide them and did not ask)."""
        if status not in STATUSES:
            raise UserError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        who = who_of(request)
        inbox = Inbox(access.store)
        wanted = tenant_scope(tenant)
        out = []
        found = inbox.with_runs(
            status=None if status == "all" else status, tenant=tenant, limit=max(1, min(limit, 1000))
        )
        for req, run_tenant, workflow in found:
            if not covers(wanted, tenant_scope(run_tenant)):
                continue
            why = _why_not(inbox, req, who, run_tenant)
            if mine and (why is not None or req.status != "pending"):
                continue
            out.append({**_approval(req), "tenant": run_tenant, "workflow": workflow, "may_decide": why is None})
        return out

    async def approval_scope(request: Request, acc: Access) -> str:
        tenant = await run_in_threadpool(Inbox(acc.store).tenant_of, request.path_params["approval_id"])
        return tenant_scope(tenant)

    @router.route("GET", "/api/v1/approvals/{approval_id}", permission="approvals:read", scope=approval_scope)
    def get_approval(request: Request, approval_id: str, response: Response) -> dict[str, Any]:
        """One request: the exact action and its hash (also the ``ETag``), the rule that fired,
        the requester, the deadline, the votes so far, and its run's state."""
        inbox = Inbox(access.store)
        req = inbox.get(approval_id)
        run = access.store.read("SELECT workflow, tenant, status FROM runs WHERE id = ?", (req.run_id,))
        workflow, tenant, run_status = run[0] if run else (None, None, None)
        why = _why_not(inbox, req, who_of(request), tenant)
        response.headers["ETag"] = f'"{req.action_hash}"'
        return {
            **_approval(req), "tenant": tenant, "workflow": workflow, "run_status": run_status,
            "rule": _rule(access, req), "votes": inbox.votes(req.id), "decided_action": req.decision_action,
            "decision_hash": req.decision_hash, "supersedes": req.supersedes, "params": req.params,
            "may_decide": why is None, "why_not": why,
        }  # fmt: skip

    @router.route(
        "POST", "/api/v1/approvals/{approval_id}/decide", permission="approvals:decide", scope=approval_scope,
        responses={
            409: {"description": "already decided (approval_closed), or votes for different actions (action_mismatch)"},
            412: {"description": "the hash sent is not this request's action (action_mismatch); nothing recorded"},
            428: {"description": "no If-Match and no action_hash"},
        },
    )  # fmt: skip
    def decide(
        request: Request, approval_id: str, body: DecideBody,
        if_match: str | None = Header(None, alias="If-Match", description='"<action hash>": the ETag of the request'),
    ) -> Any:  # fmt: skip
        """Approve, reject (with a reason) or edit (approve with changed ``args``).

        Needs the action hash you were shown: ``If-Match: "<hash>"`` (the ``ETag`` of the
        request) or ``action_hash`` in the body. 428 without it; 412 when it is not this
        request's action; 409 when the request is already closed (someone else decided)."""
        who = who_of(request)
        inbox = Inbox(access.store)
        sent = _etag(if_match) or body.action_hash
        if not sent:
            return _error(428, "precondition_required",
                          "send the action hash you were shown: If-Match: \"<hash>\" (the request's ETag)")  # fmt: skip
        decision, args = body.decision, body.args
        if decision == "edit":
            if not args:
                raise UserError("an edit needs args: the keyword arguments to change")
            decision = "approve"
        req = inbox.get(approval_id)
        if sent != req.action_hash:
            return _mismatch(req, sent)
        try:
            done = inbox.decide(
                req.id, decision, principal=who.id, reason=body.reason, expected_hash=sent, edited_kwargs=args,
                via=who.via, authenticated=True, shown=req.action_hash,
            )  # fmt: skip
        except WfloError as exc:
            if exc.code == "forbidden":
                access.refuse(who, "approvals:decide", GLOBAL, str(exc), remote=client_address(request))
            raise
        return _approval(done)


def _why_not(inbox: Inbox, req: ApprovalRequest, who: Principal, tenant: str | None) -> str | None:
    """Why ``who`` cannot decide ``req`` now (``None``: they can)."""
    if req.status != "pending":
        return f"it is {req.status}"
    if not who.allowed("approvals:decide", tenant_scope(tenant)):
        return "you may not decide approvals here (approvals:decide)"
    if who.id == req.requested_by:
        return "you asked for it: the requester cannot decide their own request"
    if any(v["principal"] == who.id for v in inbox.votes(req.id)):
        return "you already voted"
    return inbox.why_not(req, who.id, authenticated=True)


def _rule(access: Access, req: ApprovalRequest) -> dict[str, Any]:
    """The policy that asked: its ``when`` rule as written, approvers, quorum and deadline."""
    text = None
    for (data,) in access.store.read(
        "SELECT data FROM events WHERE chain = ? AND type = 'approval.requested' ORDER BY seq", (req.run_id,)
    ):
        found = json.loads(data)
        if found.get("approval_id") == req.id:
            text = found.get("rule")
    return {
        "when": text, "approvers": req.approvers or ["anyone but the requester"], "quorum": req.quorum,
        "timeout_at": req.timeout_at, "on_timeout": req.on_timeout, "escalate_to": req.escalate_to,
        "escalations": req.escalations,
    }  # fmt: skip


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    value = value[2:] if value.startswith("W/") else value
    return value.strip('"') or None


def _error(status: int, code: str, message: str, **data: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **data}}, status_code=status)


def _mismatch(req: ApprovalRequest, sent: str) -> JSONResponse:
    return _error(
        412, "action_mismatch",
        f"approval {req.id} is for action {req.action_hash}, not {sent}: look at the request again",
        approval_id=req.id, expected=req.action_hash, found=sent,
    )  # fmt: skip


def _approval(r: ApprovalRequest) -> dict[str, Any]:
    keys = ("id", "run_id", "tool", "message", "action", "action_hash", "status", "approvers", "quorum",
            "requested_by", "decided_by", "reason", "via", "created_at", "decided_at", "timeout_at")  # fmt: skip
    return {k: getattr(r, k) for k in keys}


# --------------------------------------------------------------------------- costs and budgets
def _costs(router: Router) -> None:
    access = router.access

    @router.route("GET", "/api/v1/costs", permission="budgets:read", scope=tenant_query)
    def costs(
        request: Request, group: str = "model", split: str | None = None, since: str | None = None,
        until: str | None = None, tenant: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """LLM and priced tool spend (USD, calls, tokens) grouped by ``model``, ``workflow``, ``tenant``,
        ``day``, ``hour`` or ``run``; ``split`` breaks each row down by a second grouping (``group=day&split=model``:
        spend over time per model). Read from the spend book: what the ledger charged, by the hour of the
        store's clock (pruned runs included). ``since``/``until``: YYYY-MM-DD, ISO time or an age (30d); the
        window counts every hour it overlaps."""
        start, end = _window(since, until)
        return spend(access.store, group, since=start, until=end, tenant=tenant, split=split or None)

    @router.route("GET", "/api/v1/costs/top-runs", permission="budgets:read", scope=tenant_query)
    def costs_top_runs(
        request: Request, since: str | None = None, until: str | None = None, tenant: str | None = None,
        limit: int = 10,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The runs that spent most in the window (with their spend per model)."""
        start, end = _window(since, until)
        return top_runs(access.store, since=start, until=end, tenant=tenant, limit=limit)

    async def budget_scope(request: Request, acc: Access) -> str:
        # A tenant's budget belongs to that tenant; workflow, agent, project and global limits
        # cut across tenants, so only a global grant may set them.
        scope = str(await body_scope(request, acc))
        return scope if scope.startswith("tenant:") else GLOBAL

    async def scope_query(request: Request, acc: Access) -> str:
        scope = request.query_params.get("scope", "")
        return scope if scope.startswith("tenant:") else GLOBAL

    def visible(wanted: str, scope: str) -> bool:
        return covers(wanted, scope if scope.startswith("tenant:") else GLOBAL)

    @router.route("GET", "/api/v1/budgets", permission="budgets:read", scope=tenant_query)
    def list_budgets(request: Request, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every limit with its current period: spent, reserved, remaining, thresholds crossed."""
        wanted = tenant_scope(tenant)
        limits = {lim.scope: lim for lim in Ledger(access.store).limits()}
        alerted = budget_alerted(access.store)
        return [
            {**_budget(u), "max_reservation_usd": _maybe_usd(limits[u.scope].max_reservation) if u.scope in limits
             else None, "alerts": list(limits[u.scope].alerts) if u.scope in limits else [],
             "alerted": alerted.get((u.scope, u.period_start), [])}
            for u in Ledger(access.store).usage()
            if visible(wanted, u.scope)
        ]  # fmt: skip

    @router.route("PUT", "/api/v1/budgets", permission="budgets:write", scope=budget_scope)
    def set_budget(request: Request, body: BudgetBody) -> dict[str, Any]:
        """Set (or replace) a scope's limit; recorded on the system chain with who and how."""
        who = who_of(request)
        lim = Ledger(access.store).set_limit(
            body.scope, body.usd, period=body.period, max_reservation_usd=body.max_reservation_usd, by=who.id,
            via=who.via,
        )  # fmt: skip
        return {"scope": lim.scope, "limit_usd": usd_str(lim.limit), "period": lim.period}

    @router.route("GET", "/api/v1/budgets/usage", permission="budgets:read", scope=scope_query)
    def budget_usage(request: Request, scope: str, limit: int = 60) -> list[dict[str, Any]]:
        """A scope's usage period by period (newest first): limit, spent, reserved, alerts."""
        return budget_periods(access.store, scope, limit=max(1, min(limit, 1000)))

    @router.route("GET", "/api/v1/budgets/alerts", permission="budgets:read", scope=tenant_query)
    def budget_alerts(
        request: Request, since: str | None = None, tenant: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Thresholds crossed (``budget.threshold`` events of the runs), newest first."""
        wanted = tenant_scope(tenant)
        start, _ = _window(since, None)
        sql = ALERTS_SQL
        params: list[Any] = []
        if start:
            sql += " AND e.at >= ?"
            params.append(start)
        if tenant:
            sql += " AND r.tenant = ?"
            params.append(tenant)
        sql += " ORDER BY e.at DESC LIMIT ?"
        params.append(max(1, min(limit, 1000)))
        out = []
        for at, run_id, data, workflow, run_tenant in access.store.read(sql, params):
            d = json.loads(data)
            if visible(wanted, str(d.get("scope", ""))):
                out.append({
                    "at": at, "run_id": run_id, "workflow": workflow, "tenant": run_tenant, "scope": d.get("scope"),
                    "percent": d.get("percent"), "spent_usd": d.get("spent"), "limit_usd": d.get("limit"),
                })  # fmt: skip
        return out


ALERTS_SQL = (
    "SELECT e.at, e.chain, e.data, r.workflow, r.tenant FROM events e JOIN runs r ON r.id = e.chain "
    f"WHERE e.type = 'budget.threshold' AND {TYPE_INDEXED}"
)
"""Budget alerts, read through the (type, at) index (which SQLite uses only when the query
names its condition, ``TYPE_INDEXED``)."""


def _window(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    start = parse_when(since, option="since") if since else None
    end = parse_when(until, option="until") if until else None
    if start and end and end <= start:
        raise UserError(f"until ({until}) must be after since ({since})")
    return start, end


def _maybe_usd(value: Any) -> str | None:
    return None if value is None else usd_str(value)


def _budget(u: Any) -> dict[str, Any]:
    return {
        "scope": u.scope, "period": u.period, "period_start": u.period_start, "limit_usd": usd_str(u.limit),
        "spent_usd": usd_str(u.spent), "reserved_usd": usd_str(u.reserved), "remaining_usd": usd_str(u.remaining),
    }  # fmt: skip


# --------------------------------------------------------------------------- audit
def _audit(router: Router) -> None:
    access = router.access

    @router.route("POST", "/api/v1/audit/verify", permission="audit:read")
    def audit_verify(request: Request, body: VerifyBody | None = None) -> dict[str, Any]:
        """Recompute the hash chains (all, or those with events since a date) and, with a
        ``checkpoint``, check the store still extends it; unless ``spend_book`` is false, check
        the spend book against the journals too (as ``wflo audit verify``; with ``since``, of
        the recent runs and of book rows since then). The verdict
        per chain, and the book's findings."""
        body = body or VerifyBody(since=None, checkpoint=None, spend_book=True)
        who = who_of(request)
        start, _ = _window(body.since, None)
        reports = verify_all(access.store, since=start)
        cp = verify_checkpoint(access.store, body.checkpoint) if body.checkpoint else None
        book = verify_book(access.store, since=start) if body.spend_book else None
        broken = [r for r in reports if not r.ok]
        ok = not broken and (cp is None or cp.ok) and (book is None or book.ok)
        events = sum(r.count for r in reports if not r.pruned)
        access.record(
            "audit.verified", who, remote=client_address(request), since=start, ok=ok, chains=len(reports),
            broken=len(broken), **({} if book is None else {"book_findings": len(book.findings)}),
        )  # fmt: skip
        return {
            "ok": ok, "since": start, "at": now_iso(), "chains": len(reports), "events": events,
            "pruned": sum(1 for r in reports if r.pruned), "broken": [r.to_dict() for r in broken],
            "reports": [r.to_dict() | {"verdict": r.describe()} for r in reports],
            "checkpoint": cp.to_dict() if cp is not None else None,
            "spend_book": None if book is None else book.to_dict() | {
                "verdict": book.describe(), "findings": [f.to_dict() | {"describe": f.describe()} for f in book.findings],
            },
        }  # fmt: skip

    @router.route("GET", "/api/v1/audit/checkpoints", permission="audit:read")
    def audit_checkpoints(request: Request) -> list[dict[str, Any]]:
        """Signed checkpoints made of this store (``audit.checkpointed``), newest first. The
        signed files themselves live outside the database."""
        rows = access.store.read(
            "SELECT seq, at, data FROM events WHERE chain = 'system' AND type = 'audit.checkpointed' ORDER BY seq DESC"
        )
        return [{"seq": int(seq), "recorded_at": at, **json.loads(data)} for seq, at, data in rows]

    @router.route("POST", "/api/v1/audit/export", permission="audit:read", response_class=FileResponse)
    def audit_export(request: Request, body: ExportBody | None = None) -> Response:
        """A zip of the events (JSONL or CSV) and their manifest.json (SHA-256 of each file,
        chain heads), as ``wflo audit export`` writes; recorded as ``audit.exported``."""
        body = body or ExportBody()
        who = who_of(request)
        start, _ = _window(body.since, None)
        run_id = access.store.find_run(body.run).id if body.run else None
        work = Path(tempfile.mkdtemp(prefix="wflo-export-"))
        try:
            manifest = export(access.store, work / "export", fmt=body.format, run_id=run_id, since=start, by=who.id)
            stamp = manifest["at"][:19].replace(":", "").replace("-", "")
            name = f"wflo-export-{stamp}.zip"
            with zipfile.ZipFile(work / name, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in [*manifest["files"], {"name": "manifest.json"}]:
                    zf.write(work / "export" / f["name"], f["name"])
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return FileResponse(
            work / name, media_type="application/zip", filename=name,
            headers={"Cache-Control": "no-store", "X-Wflo-Events": str(manifest["events"])},
            background=BackgroundTask(shutil.rmtree, work, ignore_errors=True),
        )  # fmt: skip

    @router.route(
        "GET", "/api/v1/audit/report", permission="audit:read", response_class=HTMLResponse,
        responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}},  # format=json
    )  # fmt: skip
    def audit_report(
        request: Request, since: str = "30d", until: str | None = None,
        format: Annotated[str, Query(json_schema_extra={"enum": ["html", "json"]})] = "html",
    ) -> Response:  # fmt: skip
        """The compliance report (``wflo report``) for ``[since, until)``: HTML or JSON."""
        start, end = _window(since or "30d", until)
        report = build_report(access.store, since=start or "", until=end, by=who_of(request).id)
        if format == "json":
            return JSONResponse(json.loads(json.dumps(report, default=str)))
        if format != "html":
            raise UserError(f"format must be html or json, got {format!r}")
        return HTMLResponse(
            render_html(report),
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _REPORT_CSP, "X-Content-Type-Options": "nosniff"},
        )  # fmt: skip
