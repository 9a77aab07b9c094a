"""The ASGI app: OIDC sign-in and sessions here; the API and the panel's pages in their modules.

Each module (``_runs``, ``_decisions``, ``_admin``, and ``_panel`` for the shell) has a
``register(router)`` that adds its routes to the one route table, each with its permission.
"""

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

from ..auth import Access, ClaimsPolicy, Identities, Principal, Tokens
from ..config import Settings, get_store, settings
from ..errors import AuthenticationError, WfloError
from . import _admin, _decisions, _device, _panel, _runs, _tools
from ._headers import SecurityHeaders
from ._oidc import Provider, QueryRedactor
from ._routes import CSRF_COOKIE, PUBLIC, SESSION_COOKIE, SIGNED_IN, Router, client_address, who_of
from ._signin import PendingLogins, RateLimiter

_STATUS = {
    "forbidden": 403, "unauthenticated": 401, "not_found": 404, "approval_closed": 409, "action_mismatch": 409,
    "user_error": 400, "configuration_error": 500,
}  # fmt: skip
_LOGIN_COOKIE = "wflo_login_state"


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
    # Shared through the store: any process may serve a sign-in's callback or count an attempt.
    limiter = RateLimiter(access.store, limit=20, window=60.0)
    router = Router(app, access, tokens, limiter)
    app.state.router = router
    app.add_middleware(SecurityHeaders)  # outermost: every answer, refusals and replays too
    pending = PendingLogins(access.store)
    provider = Provider(cfg.oidc_issuer, cfg.oidc_client_id, cfg.oidc_client_secret) if cfg.oidc_issuer else None
    policy = ClaimsPolicy.parse(
        cfg.oidc_role_map, cfg.oidc_allowed_groups, cfg.oidc_allowed_domains, cfg.oidc_groups_claim,
        cfg.oidc_require_email_verified,
    )  # fmt: skip
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
            return _panel.frame(request, None, title="wflo", body="<p>Sign in to see runs, approvals and costs.</p>")
        return _panel.frame(
            request, who, title="Overview", body="<div id='overview' class='cards'></div>", script="overview.js",
            registered=app.state.pages,
        )  # fmt: skip

    @router.route("GET", "/auth/login", permission=PUBLIC)
    def login(request: Request, next: str = "/") -> Response:
        limited(request)
        if provider is None:
            return _page("<p>single sign-on is not configured (WFLO_OIDC_ISSUER)</p>", 503)
        # Only a local path: never an open redirect to another site.
        target = next if _local_path(next) else "/"
        state, item = pending.add(target)
        resp = RedirectResponse(provider.authorize_url(redirect_uri(request), state, item.nonce, item.verifier), 303)
        resp.set_cookie(_LOGIN_COOKIE, state, max_age=600, httponly=True, secure=cfg.cookie_secure, samesite="lax")
        return resp

    @router.route("GET", "/auth/callback", permission=PUBLIC)
    def callback(request: Request, state: str = "", code: str = "", error: str = "") -> Response:
        limited(request)
        remote = client_address(request)
        item = pending.take(state) if state and request.cookies.get(_LOGIN_COOKIE) == state else None
        claims: dict[str, Any] | None = None
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
        except AuthenticationError as exc:  # with the verified claims when it is the account that is refused
            access.store.append_system([_failed(remote, str(exc.detail), claims)])
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
        who = who_of(request)
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
        who = who_of(request)
        if who.via != "panel":
            return _page("<p id='error'>sign in with the browser to create a CLI token</p>", 400)
        _, secret = tokens.create_personal(who, remote=client_address(request))
        return _page(
            f"<p>Shown once. Paste it into <code>wflo login</code>:</p><pre id='token'>{html.escape(secret)}</pre>"
        )

    # ----------------------------------------------------------------- API
    @router.route("GET", "/api/v1/me", permission=SIGNED_IN)
    def me(request: Request) -> dict[str, Any]:
        who = who_of(request)
        return {
            "principal": who.id, "via": who.via, "token_id": who.token_id,
            "grants": [{"role": r, "scope": s} for r, s in who.grants],
        }  # fmt: skip

    for module in (_panel, _runs, _decisions, _admin, _tools, _device):
        module.register(router)

    return app


_REDACT = QueryRedactor()


def _local_path(target: str) -> bool:
    """A path on this site: one leading slash, no backslash (browsers read ``/\\evil`` as
    ``//evil``), no control character (a tab or line break is dropped by the browser)."""
    return (
        target.startswith("/") and not target.startswith("//") and "\\" not in target
        and not any(ord(c) < 32 or ord(c) == 127 for c in target)
    )  # fmt: skip


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
