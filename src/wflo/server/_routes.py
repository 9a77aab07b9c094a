"""The route table: every route declares the permission it needs and where it applies.

``Router.route(method, path, permission=..., scope=...)`` registers a FastAPI endpoint and
records its ``RouteSpec``; the endpoint gets the authenticated, authorized ``Principal`` as
its ``who`` argument. ``PUBLIC`` routes (sign-in pages) and ``SIGNED_IN`` routes (``/me``)
say so explicitly; tests/unit/auth/test_server_matrix.py fails for a route missing here.

Authentication, in order: ``Authorization: Bearer wflo_…`` (an API token, ``via: api``),
else the session cookie (``via: panel``), which must bring the CSRF token (header
``X-CSRF-Token`` or form field ``csrf``) on every state-changing request. Failed token
attempts are rate-limited per client address; refusals are recorded on the system chain.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from ..auth import GLOBAL, Access, Principal, Tokens, tenant_scope
from ..errors import AuthenticationError
from . import _errors, _idempotency
from ._signin import RateLimiter

PUBLIC = "public"
SIGNED_IN = "signed-in"
SESSION_COOKIE = "wflo_session"
CSRF_COOKIE = "wflo_csrf"
_SAFE = ("GET", "HEAD", "OPTIONS")
MAX_BODY = 1 << 20
"""The largest request body (bytes): a larger one is 413 before it is read, whoever sends it."""

ScopeFn = Callable[[Request, Access], Awaitable[str]]


async def global_scope(request: Request, access: Access) -> str:
    return GLOBAL


async def tenant_query(request: Request, access: Access) -> str:
    """``?tenant=acme`` → ``tenant:acme``; none: everywhere (needs a global grant)."""
    return tenant_scope(request.query_params.get("tenant"))


async def body_scope(request: Request, access: Access) -> str:
    """The ``scope`` field of the JSON body (grants, tokens)."""
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(422, "the body must be JSON") from None
    return str(body.get("scope") or GLOBAL) if isinstance(body, dict) else GLOBAL


async def refuse_nul(request: Request) -> None:
    """422 for a NUL character in the path, the query or a JSON body: no id, name or filter
    holds one, and PostgreSQL cannot even compare text with one (it would answer 500)."""
    where = "path" if "\x00" in request.scope.get("path", "") else None
    if where is None and any("\x00" in k or "\x00" in v for k, v in request.query_params.multi_items()):
        where = "query"
    if where is None and request.method not in _SAFE and "json" in request.headers.get("content-type", ""):
        body = await request.body()
        if b"\x00" in body or b"\\u0000" in body.lower():
            # Not JSON (or nested past reason): the endpoint's own parsing says so.
            with contextlib.suppress(ValueError, RecursionError):
                where = "body" if _has_nul(json.loads(body)) else None
    if where is not None:
        raise HTTPException(422, f"the request's {where} holds a NUL character (\\x00); text may not contain one")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


@dataclass(frozen=True, slots=True)
class RouteSpec:
    method: str
    path: str
    permission: str
    """A permission (``approvals:decide``), ``PUBLIC`` or ``SIGNED_IN``."""
    scope: ScopeFn


class Router:
    def __init__(self, app: FastAPI, access: Access, tokens: Tokens, limiter: RateLimiter) -> None:
        self.app, self.access, self.tokens, self.limiter = app, access, tokens, limiter
        self.table: list[RouteSpec] = []
        _errors.install(app)  # every refusal answers {"error": {"code", "message"}} (docs/api.md)
        # Idempotency-Key for every state-changing /api/v1 route: the check below claims the
        # key, this middleware keeps the answer, the handler replays it (see _idempotency.py).
        self.idempotency = _idempotency.IdempotencyKeys(access.store)
        app.add_middleware(_idempotency.IdempotencyMiddleware, keys=self.idempotency)
        app.add_middleware(BodyLimit)
        app.add_exception_handler(_idempotency.Replay, lambda request, exc: exc.response())

    def route(
        self, method: str, path: str, *, permission: str, scope: ScopeFn = global_scope, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        spec = RouteSpec(method, path, permission, scope)
        self.table.append(spec)

        async def check(request: Request) -> None:
            # Runs before the endpoint, for every route registered here: an endpoint cannot
            # forget its check. The endpoint reads the principal from ``request.state.who``.
            await refuse_nul(request)
            request.state.who = await self.authorize(request, spec)
            who = request.state.who
            await _idempotency.check(request, self.idempotency, who.id if who is not None else None)

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            # The OpenAPI document says what each operation needs, and that it takes a key.
            extra: dict[str, Any] = {"x-wflo-permission": permission}
            if method in _idempotency.METHODS and path.startswith("/api/v1/"):
                extra["parameters"] = [_idempotency.OPENAPI_PARAMETER]
            kwargs.setdefault("openapi_extra", extra)
            self.app.add_api_route(path, fn, methods=[method], dependencies=[Depends(check)], **kwargs)
            return fn

        return register

    # ----------------------------------------------------------------- authentication
    async def principal(self, request: Request, *, required: bool = True) -> Principal | None:
        remote = client_address(request)
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            # Failed token attempts are counted per address; past the limit even a good
            # token waits, so guessing is throttled whatever the guesses are.
            if await run_in_threadpool(self.limiter.blocked, f"token:{remote}"):
                raise HTTPException(429, "too many failed attempts; wait a minute")
            try:
                return await run_in_threadpool(self.tokens.authenticate, header[7:].strip(), via="api", remote=remote)
            except AuthenticationError as exc:
                await run_in_threadpool(self.limiter.hit, f"token:{remote}")
                raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            try:
                session = await run_in_threadpool(self.tokens.session, sid)
            except AuthenticationError as exc:
                if required:
                    raise HTTPException(401, str(exc)) from None
                return None
            if request.method not in _SAFE:
                sent = request.headers.get("x-csrf-token")
                if sent is None and "form" in request.headers.get("content-type", ""):
                    sent = str((await request.form()).get("csrf") or "") or None
                if not self.tokens.csrf_ok(session, sent):
                    raise HTTPException(403, "missing or wrong CSRF token")
            return await run_in_threadpool(self.access.of, session.principal, "panel")
        if required:
            raise HTTPException(
                401, "sign in (/auth/login) or send a bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        return None

    async def authorize(self, request: Request, spec: RouteSpec) -> Principal | None:
        if spec.permission == PUBLIC:
            return await self.principal(request, required=False)
        who = await self.principal(request)
        assert who is not None
        if spec.permission == SIGNED_IN:
            return who
        scope = await spec.scope(request, self.access)
        if not who.allowed(spec.permission, scope):
            await run_in_threadpool(
                self.access.refuse, who, spec.permission, scope, f"{spec.method} {spec.path}",
                remote=client_address(request),
            )  # fmt: skip
            raise HTTPException(403, f"{who.id} may not {spec.permission} on {scope}")
        return who

    def spec(self, method: str, path: str) -> RouteSpec:
        return next(s for s in self.table if s.method == method and s.path == path)


class BodyLimit:
    """413 for a body over ``MAX_BODY``: by its Content-Length at once, else as it arrives.

    Without it a caller, signed in or not, could make the server hold any amount in memory:
    a route reads the whole body before its check refuses the caller."""

    def __init__(self, app: _idempotency.ASGIApp, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: _idempotency.Scope, receive: Callable[[], Awaitable[_idempotency.Message]],
                       send: Callable[[_idempotency.Message], Awaitable[None]]) -> None:  # fmt: skip
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = HTTPException(413, f"the request body is over {self.limit} bytes")
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if length.isdigit() and int(length) > self.limit:
            await _errors.http_error_response(refusal)(scope, receive, send)
            return
        seen = 0

        async def counted() -> _idempotency.Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # a chunked body: the route reading it gets the refusal
                raise refusal
            return message

        await self.app(scope, counted, send)


def who_of(request: Request) -> Principal:
    """The authenticated principal of a route that needs one (set by the route's check)."""
    who: Principal = request.state.who
    return who


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
