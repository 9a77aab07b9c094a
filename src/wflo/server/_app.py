"""The ASGI app: OIDC sign-in, sessions, and the first API endpoints, each behind its permission."""

from __future__ import annotations

import html
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from .._config import Settings, get_store, settings
from .._errors import AuthenticationError, WfloError
from ..approvals import Inbox
from ..auth import GLOBAL, Access, ClaimsPolicy, Identities, Principal, Tokens, covers, tenant_scope
from ..cost._api import ledger
from ..cost._ledger import usd_str
from ._oidc import PendingLogins, Provider, QueryRedactor, RateLimiter
from ._routes import CSRF_COOKIE, PUBLIC, SESSION_COOKIE, SIGNED_IN, Router, body_scope, client_address, tenant_query

_STATUS = {
    "forbidden": 403, "unauthenticated": 401, "not_found": 404, "approval_closed": 409, "action_mismatch": 409,
    "user_error": 400, "configuration_error": 500,
}  # fmt: skip
_LOGIN_COOKIE = "wflo_login_state"


class DecideBody(BaseModel):
    decision: str
    reason: str | None = None
    action_hash: str | None = None
    args: dict[str, Any] | None = None


class GrantBody(BaseModel):
    principal: str
    role: str
    scope: str = GLOBAL


class BudgetBody(BaseModel):
    scope: str
    usd: str
    period: str = "none"
    max_reservation_usd: str | None = None


class SignOutBody(BaseModel):
    principal: str


class TokenBody(BaseModel):
    name: str
    role: str
    scope: str = GLOBAL
    expires: str | None = "90d"


def _who(request: Request) -> Principal:
    who: Principal = request.state.who
    return who


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>wflo</title></head><body>{body}</body></html>",
        status_code=status,
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def create_app(cfg: Settings | None = None) -> FastAPI:
    """The wflo server on the configured store (``wflo server`` runs it with uvicorn)."""
    cfg = cfg or settings()
    # OpenAPI 3.1 is served through the route table like every other route (PUBLIC).
    app = FastAPI(title="wflo", version="1", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan)
    access = Access(get_store())
    tokens = Tokens(access)
    limiter = RateLimiter(limit=20, window=60.0)
    router = Router(app, access, tokens, limiter)
    app.state.router = router
    pending = PendingLogins()
    provider = Provider(cfg.oidc_issuer, cfg.oidc_client_id, cfg.oidc_client_secret) if cfg.oidc_issuer else None
    policy = ClaimsPolicy.parse(
        cfg.oidc_role_map, cfg.oidc_allowed_groups, cfg.oidc_allowed_domains, cfg.oidc_groups_claim
    )
    base = (cfg.server_url or "").rstrip("/")
    ttl = timedelta(hours=cfg.session_hours)

    @app.exception_handler(WfloError)
    async def wflo_error(request: Request, exc: WfloError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=_STATUS.get(exc.code, 400))

    def redirect_uri(request: Request) -> str:
        return (base or str(request.base_url).rstrip("/")) + "/auth/callback"

    def limited(request: Request) -> None:
        if not limiter.allow(f"login:{client_address(request)}"):
            raise HTTPException(429, "too many sign-in attempts; wait a minute")

    @router.route("GET", "/openapi.json", permission=PUBLIC, include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    # ----------------------------------------------------------------- pages and sign-in
    @router.route("GET", "/", permission=PUBLIC, response_class=HTMLResponse)
    def home(request: Request) -> HTMLResponse:
        who: Principal | None = request.state.who
        if who is None:
            return _page("<h1>wflo</h1><p id='status'>not signed in</p><a id='login' href='/auth/login'>Sign in</a>")
        roles = ", ".join(f"{r}@{s}" for r, s in who.grants) or "no roles"
        csrf = html.escape(request.cookies.get(CSRF_COOKIE, ""))
        return _page(
            f"<h1>wflo</h1><p id='status'>signed in as <b id='who'>{html.escape(who.id)}</b></p>"
            f"<p id='roles'>{html.escape(roles)}</p>"
            f"<form method='post' action='/auth/logout'><input type='hidden' name='csrf' value='{csrf}'>"
            "<button id='logout' type='submit'>Sign out</button></form>"
        )

    @router.route("GET", "/auth/login", permission=PUBLIC)
    def login(request: Request, next: str = "/") -> Response:
        limited(request)
        if provider is None:
            return _page("<p>single sign-on is not configured (WFLO_OIDC_ISSUER)</p>", 503)
        # Only a local path: never an open redirect to another site.
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        state, item = pending.add(target)
        resp = RedirectResponse(provider.authorize_url(redirect_uri(request), state, item.nonce, item.verifier), 303)
        resp.set_cookie(_LOGIN_COOKIE, state, max_age=600, httponly=True, secure=cfg.cookie_secure, samesite="lax")
        return resp

    @router.route("GET", "/auth/callback", permission=PUBLIC)
    def callback(request: Request, state: str = "", code: str = "", error: str = "") -> Response:
        limited(request)
        remote = client_address(request)
        item = pending.take(state) if state and request.cookies.get(_LOGIN_COOKIE) == state else None
        try:
            if provider is None or item is None:
                raise AuthenticationError(detail="unknown or expired sign-in attempt (start again)")
            if error or not code:
                raise AuthenticationError(detail=f"the provider said {error or 'no code'}")
            claims = provider.verify(provider.exchange(code, redirect_uri(request), item.verifier), item.nonce)
            refusal = policy.refusal(claims)
            if refusal:
                access.store.append_system([_failed(remote, refusal, claims)])
                return _page(f"<p id='error'>sign-in refused: {html.escape(refusal)}</p>", 403)
            pid = Identities(access).login(claims, policy, via="panel", remote=remote)
        except AuthenticationError as exc:
            access.store.append_system([_failed(remote, str(exc.detail), None)])
            return _page(f"<p id='error'>{html.escape(str(exc))}</p>", 401)
        sid, csrf = tokens.open_session(pid, ttl=ttl, remote=remote)
        resp = RedirectResponse(item.next, 303)
        resp.delete_cookie(_LOGIN_COOKIE)
        age = int(ttl.total_seconds())
        resp.set_cookie(SESSION_COOKIE, sid, max_age=age, httponly=True, secure=cfg.cookie_secure, samesite="lax")
        resp.set_cookie(CSRF_COOKIE, csrf, max_age=age, httponly=False, secure=cfg.cookie_secure, samesite="strict")
        return resp

    @router.route("POST", "/auth/logout", permission=SIGNED_IN)
    def logout(request: Request) -> Response:
        who = _who(request)
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            tokens.end_session(sid)
        access.record("auth.logout", who, remote=client_address(request))
        resp = RedirectResponse("/", 303)
        resp.delete_cookie(SESSION_COOKIE)
        resp.delete_cookie(CSRF_COOKIE)
        return resp

    @router.route("GET", "/auth/cli-token", permission=SIGNED_IN, response_class=HTMLResponse)
    def cli_token_form(request: Request) -> HTMLResponse:
        csrf = html.escape(request.cookies.get(CSRF_COOKIE, ""))
        return _page(
            "<h1>A token for the wflo CLI</h1><p>It acts as you, with your roles, for 30 days.</p>"
            f"<form method='post' action='/auth/cli-token'><input type='hidden' name='csrf' value='{csrf}'>"
            "<button id='create' type='submit'>Create a CLI token</button></form>"
        )

    @router.route("POST", "/auth/cli-token", permission=SIGNED_IN, response_class=HTMLResponse)
    def cli_token(request: Request) -> HTMLResponse:
        who = _who(request)
        if who.via != "panel":
            return _page("<p id='error'>sign in with the browser to create a CLI token</p>", 400)
        _, secret = tokens.create_personal(who, remote=client_address(request))
        return _page(
            f"<p>Shown once. Paste it into <code>wflo login</code>:</p><pre id='token'>{html.escape(secret)}</pre>"
        )

    # ----------------------------------------------------------------- API
    @router.route("GET", "/api/v1/me", permission=SIGNED_IN)
    def me(request: Request) -> dict[str, Any]:
        who = _who(request)
        return {
            "principal": who.id, "via": who.via, "token_id": who.token_id,
            "grants": [{"role": r, "scope": s} for r, s in who.grants],
        }  # fmt: skip

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
        who = _who(request)
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

    @router.route("GET", "/api/v1/grants", permission="grants:read", scope=tenant_query)
    def list_grants(request: Request, tenant: str | None = None) -> list[dict[str, Any]]:
        wanted = tenant_scope(tenant)
        return [_grant(g) for g in access.grants() if covers(wanted, g.scope)]

    @router.route("POST", "/api/v1/grants", permission="grants:write", scope=body_scope, status_code=201)
    def create_grant(request: Request, body: GrantBody) -> dict[str, Any]:
        g = access.grant(body.principal, body.role, body.scope, who=_who(request), remote=client_address(request))
        return _grant(g)

    @router.route("POST", "/api/v1/grants/remove", permission="grants:write", scope=body_scope)
    def remove_grant(request: Request, body: GrantBody) -> dict[str, Any]:
        removed = access.revoke(
            body.principal, body.role, body.scope, who=_who(request), remote=client_address(request)
        )
        return {"removed": removed}

    @router.route("GET", "/api/v1/tokens", permission="tokens:read", scope=tenant_query)
    def list_tokens(request: Request, tenant: str | None = None) -> list[dict[str, Any]]:
        wanted = tenant_scope(tenant)
        return [_token(t) for t in tokens.list() if covers(wanted, t.scope)]

    @router.route("POST", "/api/v1/tokens", permission="tokens:write", scope=body_scope, status_code=201)
    def create_token(request: Request, body: TokenBody) -> dict[str, Any]:
        info, secret = tokens.create(
            body.name, body.role, body.scope, expires=body.expires, who=_who(request), remote=client_address(request)
        )
        return {**_token(info), "token": secret}

    async def token_scope(request: Request, acc: Access) -> str:
        rows = await run_in_threadpool(
            acc.store.read, "SELECT scope FROM api_tokens WHERE id = ?", (request.path_params["token_id"],)
        )
        return str(rows[0][0]) if rows else GLOBAL

    @router.route("DELETE", "/api/v1/tokens/{token_id}", permission="tokens:write", scope=token_scope)
    def revoke_token(request: Request, token_id: str) -> dict[str, Any]:
        return _token(tokens.revoke(token_id, who=_who(request), remote=client_address(request)))

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
        who = _who(request)
        lim = ledger().set_limit(
            body.scope, body.usd, period=body.period, max_reservation_usd=body.max_reservation_usd, by=who.id,
            via=who.via,
        )  # fmt: skip
        return {"scope": lim.scope, "limit_usd": usd_str(lim.limit), "period": lim.period}

    @router.route("POST", "/api/v1/sessions/revoke", permission="sessions:write")
    def revoke_sessions(request: Request, body: SignOutBody) -> dict[str, Any]:
        """Sign a person out everywhere (their browser sessions end at once)."""
        who = _who(request)
        tokens.end_sessions_of(body.principal)
        access.record("auth.sessions_revoked", who, remote=client_address(request), principal=body.principal)
        return {"principal": body.principal, "signed_out": True}

    return app


_REDACT = QueryRedactor()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Store calls run in worker threads, and each thread holds its own database connection:
    # a small pool keeps the server's PostgreSQL connections bounded.
    anyio.to_thread.current_default_thread_limiter().total_tokens = 8
    logging.getLogger("uvicorn.access").addFilter(_REDACT)
    yield
    logging.getLogger("uvicorn.access").removeFilter(_REDACT)


def _failed(remote: str, reason: str, claims: dict[str, Any] | None) -> Any:
    from ..store import NewEvent

    data: dict[str, Any] = {"via": "panel", "remote": remote, "reason": reason}
    if claims:  # who tried (never the token itself)
        data.update({"subject": claims.get("sub"), "email": claims.get("email"), "issuer": claims.get("iss")})
    return NewEvent("auth.failed", data)


def _approval(r: Any) -> dict[str, Any]:
    keys = ("id", "run_id", "tool", "message", "action", "action_hash", "status", "approvers", "quorum",
            "requested_by", "decided_by", "reason", "via", "created_at", "decided_at")  # fmt: skip
    return {k: getattr(r, k) for k in keys}


def _budget(u: Any) -> dict[str, Any]:
    return {
        "scope": u.scope, "period": u.period, "period_start": u.period_start, "limit_usd": usd_str(u.limit),
        "spent_usd": usd_str(u.spent), "reserved_usd": usd_str(u.reserved),
    }  # fmt: skip


def _grant(g: Any) -> dict[str, Any]:
    return {k: getattr(g, k) for k in ("principal", "role", "scope", "granted_by", "via", "source", "granted_at")}


def _token(t: Any) -> dict[str, Any]:
    keys = ("id", "name", "principal", "prefix", "role", "scope", "created_by", "created_at", "expires_at",
            "revoked_at", "last_used_at")  # fmt: skip
    return {k: getattr(t, k) for k in keys}
