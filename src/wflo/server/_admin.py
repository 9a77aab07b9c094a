"""Administration: role grants, API tokens, sessions (and, later, tools, workers and users)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ..auth import GLOBAL, Access, covers, tenant_scope
from ._routes import Router, body_scope, client_address, tenant_query, who_of


class GrantBody(BaseModel):
    principal: str
    role: str
    scope: str = GLOBAL


class SignOutBody(BaseModel):
    principal: str


class TokenBody(BaseModel):
    name: str
    role: str
    scope: str = GLOBAL
    expires: str | None = "90d"


def register(router: Router) -> None:
    access, tokens = router.access, router.tokens

    @router.route("GET", "/api/v1/grants", permission="grants:read", scope=tenant_query)
    def list_grants(request: Request, tenant: str | None = None) -> list[dict[str, Any]]:
        wanted = tenant_scope(tenant)
        return [_grant(g) for g in access.grants() if covers(wanted, g.scope)]

    @router.route("POST", "/api/v1/grants", permission="grants:write", scope=body_scope, status_code=201)
    def create_grant(request: Request, body: GrantBody) -> dict[str, Any]:
        g = access.grant(body.principal, body.role, body.scope, who=who_of(request), remote=client_address(request))
        return _grant(g)

    @router.route("POST", "/api/v1/grants/remove", permission="grants:write", scope=body_scope)
    def remove_grant(request: Request, body: GrantBody) -> dict[str, Any]:
        removed = access.revoke(
            body.principal, body.role, body.scope, who=who_of(request), remote=client_address(request)
        )
        return {"removed": removed}

    @router.route("GET", "/api/v1/tokens", permission="tokens:read", scope=tenant_query)
    def list_tokens(request: Request, tenant: str | None = None) -> list[dict[str, Any]]:
        wanted = tenant_scope(tenant)
        return [_token(t) for t in tokens.list() if covers(wanted, t.scope)]

    @router.route("POST", "/api/v1/tokens", permission="tokens:write", scope=body_scope, status_code=201)
    def create_token(request: Request, body: TokenBody) -> dict[str, Any]:
        info, secret = tokens.create(
            body.name, body.role, body.scope, expires=body.expires, who=who_of(request), remote=client_address(request)
        )
        return {**_token(info), "token": secret}

    async def token_scope(request: Request, acc: Access) -> str:
        rows = await run_in_threadpool(
            acc.store.read, "SELECT scope FROM api_tokens WHERE id = ?", (request.path_params["token_id"],)
        )
        return str(rows[0][0]) if rows else GLOBAL

    @router.route("DELETE", "/api/v1/tokens/{token_id}", permission="tokens:write", scope=token_scope)
    def revoke_token(request: Request, token_id: str) -> dict[str, Any]:
        return _token(tokens.revoke(token_id, who=who_of(request), remote=client_address(request)))

    @router.route("POST", "/api/v1/sessions/revoke", permission="sessions:write")
    def revoke_sessions(request: Request, body: SignOutBody) -> dict[str, Any]:
        """Sign a person out everywhere (their browser sessions end at once)."""
        who = who_of(request)
        tokens.end_sessions_of(body.principal)
        access.record("auth.sessions_revoked", who, remote=client_address(request), principal=body.principal)
        return {"principal": body.principal, "signed_out": True}


def _grant(g: Any) -> dict[str, Any]:
    return {k: getattr(g, k) for k in ("principal", "role", "scope", "granted_by", "via", "source", "granted_at")}


def _token(t: Any) -> dict[str, Any]:
    keys = ("id", "name", "principal", "prefix", "role", "scope", "created_by", "created_at", "expires_at",
            "revoked_at", "last_used_at")  # fmt: skip
    return {k: getattr(t, k) for k in keys}
