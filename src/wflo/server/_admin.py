"""Administration and operations: people and their roles, API tokens, sessions, workers.

The ``/admin`` page (people, roles, tokens) and the ``/workers`` page (who runs what, queue
depth) read and act only through the routes here; the first-start sign-in link is in
``_firstrun``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..auth import GLOBAL, Access, Identities, Offboarded, check_principal, covers, tenant_scope
from ..config import settings
from ..engine import registered_workers
from ..store import parse_iso
from . import _firstrun
from ._panel import page_route
from ._routes import PUBLIC, Router, body_scope, client_address, tenant_query, who_of

_UNFINISHED = ("queued", "running", "waiting")
"""Statuses of runs that are not finished: the queues workers serve."""


class GrantBody(BaseModel):
    principal: str
    role: str
    scope: str = GLOBAL


class SignOutBody(BaseModel):
    principal: str


class UserChangeBody(BaseModel):
    principal: str = Field(max_length=300)
    """``user:ann@example.com`` or ``service:ci``."""
    reason: str = Field(default="", max_length=500)
    """Why (recorded on the system chain); needed to disable and to unbind."""


class UnbindBody(UserChangeBody):
    remove_grants: bool = False
    """Also remove every role the principal holds (a mailbox given to someone else)."""


class TokenBody(BaseModel):
    name: str
    role: str
    scope: str = GLOBAL
    expires: str | None = "90d"


def register(router: Router) -> None:
    access, tokens = router.access, router.tokens
    people = Identities(access)
    page_route(router, "/admin", "Admin", script="admin.js", body="<div id='admin'></div>")
    page_route(router, "/workers", "Workers", script="workers.js", body="<div id='workers'></div>")
    _firstrun.register(router)

    @router.route("GET", "/healthz", permission=PUBLIC)
    def health(request: Request) -> JSONResponse:
        """For load balancers: 200 when this replica reaches the store, else 503 (no secrets, no data)."""
        try:
            access.store.ping()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "error": {"code": "unavailable",
                                 "message": f"store unreachable: {type(exc).__name__}"}}, status_code=503)  # fmt: skip
        return JSONResponse({"status": "ok"})

    @router.route("GET", "/api/v1/users", permission="grants:read")
    def list_users(request: Request) -> list[dict[str, Any]]:
        """People and service accounts: who signed in, who holds a role, their tokens and
        sessions, and whether they are disabled (when, by whom, why) or bound to a provider account."""
        return people.people()

    def known(body: UserChangeBody) -> None:
        # A malformed name is a 400 (what is wrong with it), an unknown one a 404.
        pid = check_principal(body.principal.strip())
        if not pid.startswith("group:") and not people.known(pid):  # a group: the 400 that says why
            raise HTTPException(404, f"no principal {body.principal!r} is known here")

    @router.route("POST", "/api/v1/users/disable", permission="users:write")
    def disable_user(request: Request, body: UserChangeBody) -> dict[str, Any]:
        """Disable a person or service account (``reason`` needed): its sessions end and the
        tokens acting as it are revoked at once; its sign-ins and approval votes are refused.
        Tokens it made for service accounts keep working and are listed (``tokens_made``).
        Not yourself, not the last enabled admin."""
        known(body)
        return _change(people.disable(body.principal, reason=body.reason, who=who_of(request),
                                      remote=client_address(request)))  # fmt: skip

    @router.route("POST", "/api/v1/users/enable", permission="users:write")
    def enable_user(request: Request, body: UserChangeBody) -> dict[str, Any]:
        """Let a disabled principal sign in again (what was revoked stays revoked)."""
        known(body)
        return _change(people.enable(body.principal, reason=body.reason, who=who_of(request),
                                     remote=client_address(request)))  # fmt: skip

    @router.route("POST", "/api/v1/users/unbind", permission="users:write")
    def unbind_user(request: Request, body: UnbindBody) -> dict[str, Any]:
        """Release a person's binding to its provider account (``reason`` needed): the next
        sign-in with its email binds afresh. Its sessions and personal tokens end;
        ``remove_grants`` also removes its roles."""
        known(body)
        return _change(people.unbind(body.principal, reason=body.reason, who=who_of(request),
                                     remote=client_address(request), remove_grants=body.remove_grants))  # fmt: skip

    @router.route("GET", "/api/v1/workers", permission="runs:read")
    def list_workers(request: Request) -> dict[str, Any]:
        """Workers that are up (idle ones too) and their leases and runs, and the queue depth per
        workflow and status."""
        return workers(access)

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
        """The token's scope (an unknown token: everywhere, then 404)."""
        found = await run_in_threadpool(tokens.get, request.path_params["token_id"])
        return found.scope if found else GLOBAL

    @router.route("DELETE", "/api/v1/tokens/{token_id}", permission="tokens:write", scope=token_scope)
    def revoke_token(request: Request, token_id: str) -> dict[str, Any]:
        # By id only, as the path says: a name or a prefix would be judged on another scope.
        if tokens.get(token_id) is None:
            raise HTTPException(404, f"no token with id {token_id!r}")
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


def _change(done: Offboarded) -> dict[str, Any]:
    return {"action": done.action, **done.record()}


def _token(t: Any) -> dict[str, Any]:
    keys = ("id", "name", "principal", "prefix", "role", "scope", "created_by", "created_at", "expires_at",
            "revoked_at", "last_used_at")  # fmt: skip
    return {k: getattr(t, k) for k in keys}


def workers(access: Access) -> dict[str, Any]:
    """Workers: those in the registry (each ``Worker`` keeps its row while it is up, idle or
    not), and any other that holds an unexpired lease (a worker whose registry row lapsed).

    A worker renews its leases on every heartbeat (to now + ``lease_seconds``), so its last
    heartbeat is at least its latest lease expiry minus ``lease_seconds`` (this server's
    setting; an estimate when workers run with another), and at least its registry row's
    ``seen_at``. A running run whose lease expired waits for another worker to recover it
    (``orphaned``).
    """
    st = access.store
    now = st.now()  # leases are judged on the store's clock, so they are read on it too
    lease = settings().lease_seconds
    found: dict[str, dict[str, Any]] = {}
    held = st.read(
        "SELECT lease_owner, id, workflow, lease_expires_at FROM runs WHERE status IN ('running', 'waiting') "
        "AND lease_owner IS NOT NULL AND lease_expires_at >= ? ORDER BY lease_owner, id",
        (now,),
    )
    for owner, run_id, workflow, expires in held:
        host, _, rest = str(owner).partition(":")
        w = found.setdefault(owner, {"id": owner, "host": host, "pid": rest.split(":", 1)[0], "leases": 0,
                                     "runs": [], "lease_expires_at": expires})  # fmt: skip
        w["leases"] += 1
        if len(w["runs"]) < 50:  # the count is exact; the list is a sample
            w["runs"].append({"id": run_id, "workflow": workflow, "lease_expires_at": expires})
        w["lease_expires_at"] = max(w["lease_expires_at"], expires)
    for w in found.values():
        beat = parse_iso(w["lease_expires_at"]) - timedelta(seconds=lease)
        # A worker configured with a longer lease than this server's would look ahead of now.
        w["last_heartbeat"] = min(beat.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), now)
        w.update(registered=False, started_at=None, concurrency=None, queues=None, workflows=None)
    for info in registered_workers(st):
        w = found.setdefault(info.id, {"id": info.id, "leases": 0, "runs": [], "lease_expires_at": None,
                                       "last_heartbeat": info.seen_at})  # fmt: skip
        w.update(host=info.host, pid=str(info.pid), registered=True, started_at=info.started_at,
                 concurrency=info.concurrency, queues=None if info.queues is None else list(info.queues),
                 workflows=list(info.workflows))  # fmt: skip
        w["last_heartbeat"] = max(w["last_heartbeat"], info.seen_at)
    marks = ", ".join("?" * len(_UNFINISHED))
    queues = [
        {"workflow": wf, "status": status, "count": int(n), "oldest": oldest}
        for wf, status, n, oldest in st.read(
            f"SELECT workflow, status, COUNT(*), MIN(created_at) FROM runs WHERE status IN ({marks}) "
            "GROUP BY workflow, status ORDER BY workflow, status",
            _UNFINISHED,
        )
    ]
    orphaned = [
        {"workflow": wf, "count": int(n)}
        for wf, n in st.read(
            "SELECT workflow, COUNT(*) FROM runs WHERE status = 'running' AND (lease_owner IS NULL OR "
            "lease_expires_at < ?) GROUP BY workflow ORDER BY workflow",
            (now,),
        )
    ]
    return {"now": now, "lease_seconds": lease, "workers": sorted(found.values(), key=lambda w: w["id"]), "queues": queues,
            "orphaned": orphaned}  # fmt: skip
