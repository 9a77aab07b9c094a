"""The authorization matrix, generated from the server's route table: every endpoint x every
role x a token in the resource's tenant or another one -> allowed or 403 (issue 16)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from wflo import _config
from wflo.approvals import inbox
from wflo.auth import GLOBAL, PERMISSIONS, ROLES, access, covers, role_allows, tokens
from wflo.server import PUBLIC, SIGNED_IN, create_app

Example = Callable[[], tuple[str, dict[str, Any] | None]]


def _approval(tenant: str = "acme") -> str:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    _config.get_store().create_run(run_id=run_id, workflow="wf", input={}, tenant=tenant)
    req, _ = inbox().create(
        approval_id=f"ap-{run_id}", run_id=run_id, call_id="c1", tool="refund", message="refund",
        action={"tool": "refund", "kwargs": {}}, approvers=[], quorum=1, requested_by="user:requester",
        timeout_at=None, on_timeout="reject", escalate_to=[],
    )  # fmt: skip
    return req.id


def _token_id() -> str:
    info, _ = tokens().create(f"t{uuid.uuid4().hex[:8]}", "viewer", "tenant:acme", who=access().local("user:root"))
    return info.id


def _run(tenant: str = "acme", *, done: bool = False) -> str:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    store = _config.get_store()
    store.create_run(run_id=run_id, workflow="wf", input={}, tenant=tenant)
    if done:
        from wflo.store import Head, NewEvent

        r = store.get_run(run_id)
        store.append(run_id, Head(r.last_seq, r.last_hash), [NewEvent("run.completed", {})], owner=None,
                     status="succeeded", output=1, finish=True)  # fmt: skip
    return run_id


# One request per route, aimed at tenant acme. A route missing here fails the matrix.
EXAMPLES: dict[tuple[str, str], Example] = {
    ("GET", "/"): lambda: ("/", None),
    ("GET", "/openapi.json"): lambda: ("/openapi.json", None),
    ("GET", "/static/{name}"): lambda: ("/static/wflo.css", None),
    ("GET", "/auth/login"): lambda: ("/auth/login", None),
    ("GET", "/auth/callback"): lambda: ("/auth/callback?state=x&code=y", None),
    ("POST", "/auth/logout"): lambda: ("/auth/logout", None),
    ("GET", "/auth/cli-token"): lambda: ("/auth/cli-token", None),
    ("POST", "/auth/cli-token"): lambda: ("/auth/cli-token", None),
    ("GET", "/api/v1/me"): lambda: ("/api/v1/me", None),
    ("GET", "/api/v1/approvals/{approval_id}"): lambda: (f"/api/v1/approvals/{_approval()}", None),
    ("GET", "/api/v1/approvals"): lambda: ("/api/v1/approvals?tenant=acme", None),
    ("POST", "/api/v1/approvals/{approval_id}/decide"): lambda: (
        f"/api/v1/approvals/{_approval()}/decide", {"decision": "approve"}),
    ("GET", "/api/v1/grants"): lambda: ("/api/v1/grants?tenant=acme", None),
    ("POST", "/api/v1/grants"): lambda: (
        "/api/v1/grants", {"principal": "user:new", "role": "viewer", "scope": "tenant:acme"}),
    ("POST", "/api/v1/grants/remove"): lambda: (
        "/api/v1/grants/remove", {"principal": "user:new", "role": "viewer", "scope": "tenant:acme"}),
    ("POST", "/api/v1/sessions/revoke"): lambda: ("/api/v1/sessions/revoke", {"principal": "user:someone"}),
    ("POST", "/api/v1/users/disable"): lambda: ("/api/v1/users/disable", {"principal": "user:someone", "reason": "x"}),
    ("POST", "/api/v1/users/enable"): lambda: ("/api/v1/users/enable", {"principal": "user:someone"}),
    ("POST", "/api/v1/users/unbind"): lambda: ("/api/v1/users/unbind", {"principal": "user:someone", "reason": "x"}),
    ("GET", "/api/v1/tokens"): lambda: ("/api/v1/tokens?tenant=acme", None),
    ("POST", "/api/v1/tokens"): lambda: (
        "/api/v1/tokens", {"name": f"n{uuid.uuid4().hex[:6]}", "role": "viewer", "scope": "tenant:acme"}),
    ("DELETE", "/api/v1/tokens/{token_id}"): lambda: (f"/api/v1/tokens/{_token_id()}", None),
    ("GET", "/api/v1/budgets"): lambda: ("/api/v1/budgets?tenant=acme", None),
    ("PUT", "/api/v1/budgets"): lambda: ("/api/v1/budgets", {"scope": "tenant:acme", "usd": "5", "period": "day"}),
    ("GET", "/runs"): lambda: ("/runs", None),
    ("GET", "/runs/{run_id:path}"): lambda: (f"/runs/{_run()}", None),
    ("GET", "/api/v1/runs"): lambda: ("/api/v1/runs?tenant=acme", None),
    ("GET", "/api/v1/runs/{run_id:path}"): lambda: (f"/api/v1/runs/{_run()}", None),
    ("GET", "/api/v1/runs/{run_id:path}/events"): lambda: (f"/api/v1/runs/{_run()}/events", None),
    ("POST", "/api/v1/runs/{run_id:path}/cancel"): lambda: (f"/api/v1/runs/{_run()}/cancel", None),
    ("POST", "/api/v1/runs/{run_id:path}/resume"): lambda: (f"/api/v1/runs/{_run()}/resume", None),
    ("POST", "/api/v1/runs/{run_id:path}/retry"): lambda: (f"/api/v1/runs/{_run(done=True)}/retry", None),
    ("POST", "/api/v1/runs/bulk"): lambda: ("/api/v1/runs/bulk", {"action": "cancel", "filter": {"tenant": "acme"}}),
    ("GET", "/api/v1/stream"): lambda: (f"/api/v1/stream?run={_run(done=True)}", None),
    ("GET", "/approvals"): lambda: ("/approvals", None),
    ("GET", "/costs"): lambda: ("/costs", None),
    ("GET", "/audit"): lambda: ("/audit", None),
    ("GET", "/api/v1/costs"): lambda: ("/api/v1/costs?group=day&tenant=acme", None),
    ("GET", "/api/v1/costs/top-runs"): lambda: ("/api/v1/costs/top-runs?tenant=acme", None),
    ("GET", "/api/v1/budgets/usage"): lambda: ("/api/v1/budgets/usage?scope=tenant:acme", None),
    ("GET", "/api/v1/budgets/alerts"): lambda: ("/api/v1/budgets/alerts?tenant=acme", None),
    ("POST", "/api/v1/audit/verify"): lambda: ("/api/v1/audit/verify", {"since": "1d"}),
    ("GET", "/api/v1/audit/checkpoints"): lambda: ("/api/v1/audit/checkpoints", None),
    ("POST", "/api/v1/audit/export"): lambda: ("/api/v1/audit/export", {"since": "1d"}),
    ("GET", "/api/v1/audit/report"): lambda: ("/api/v1/audit/report?since=1d", None),
    ("GET", "/admin"): lambda: ("/admin", None),
    ("GET", "/workers"): lambda: ("/workers", None),
    ("GET", "/auth/first"): lambda: ("/auth/first?code=x", None),
    ("POST", "/auth/first"): lambda: ("/auth/first", None),
    ("GET", "/api/v1/users"): lambda: ("/api/v1/users", None),
    ("GET", "/api/v1/workers"): lambda: ("/api/v1/workers", None),
    ("GET", "/healthz"): lambda: ("/healthz", None),
    ("GET", "/api/v1/tools"): lambda: ("/api/v1/tools?tenant=acme", None),
    ("GET", "/api/v1/tools/{name}"): lambda: ("/api/v1/tools/sql_query?tenant=acme", None),
    ("GET", "/api/v1/tools/grants"): lambda: ("/api/v1/tools/grants", None),
    ("POST", "/api/v1/tools/grants"): lambda: ("/api/v1/tools/grants", {"tool": "sql_query", "to": "workflow:wf"}),
    ("POST", "/api/v1/tools/grants/remove"): lambda: (
        "/api/v1/tools/grants/remove", {"tool": "sql_query", "to": "workflow:wf"}),
    ("GET", "/tools"): lambda: ("/tools", None),
    ("POST", "/auth/device"): lambda: ("/auth/device", None),
    ("POST", "/auth/device/token"): lambda: ("/auth/device/token", None),
    ("GET", "/auth/device/verify"): lambda: ("/auth/device/verify?code=BCDF-GHJK", None),
    ("POST", "/auth/device/verify"): lambda: ("/auth/device/verify", None),
}  # fmt: skip


# A token in the resource's tenant, in another tenant, and everywhere.
SCOPES = {"acme": "tenant:acme", "globex": "tenant:globex", "global": GLOBAL}
# Routes whose resource belongs to no tenant (people): only global grants reach them.
GLOBAL_ROUTES = {("POST", "/api/v1/sessions/revoke"), ("GET", "/api/v1/users"), ("GET", "/api/v1/workers")}
GLOBAL_ROUTES |= {("POST", "/api/v1/users/disable"), ("POST", "/api/v1/users/enable"), ("POST", "/api/v1/users/unbind")}
# The audit record spans every tenant (the system chain holds all their decisions).
GLOBAL_ROUTES |= {("POST", "/api/v1/audit/verify"), ("GET", "/api/v1/audit/checkpoints"),
                  ("POST", "/api/v1/audit/export"), ("GET", "/api/v1/audit/report")}  # fmt: skip
# Tool grants are the deployment's (issue 18).
GLOBAL_ROUTES |= {
    ("GET", "/api/v1/tools/grants"),
    ("POST", "/api/v1/tools/grants"),
    ("POST", "/api/v1/tools/grants/remove"),
}


def undeclared_routes(app: FastAPI) -> list[str]:
    """Routes served by ``app`` that are not in its route table (so have no permission)."""
    declared = {(s.method, s.path) for s in app.state.router.table}
    found = [(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods]
    return [f"{m} {p}" for m, p in found if (m, p) not in declared]


@pytest.fixture
def app(configured: str) -> FastAPI:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    return create_app()


def test_every_route_declares_a_known_permission(app: FastAPI) -> None:
    assert undeclared_routes(app) == []
    for spec in app.state.router.table:
        assert spec.permission in PERMISSIONS or spec.permission in (PUBLIC, SIGNED_IN), spec
    # The check can fail: a route added around the table is caught.
    app.add_api_route("/api/v1/sneaky", lambda: {"ok": True}, methods=["GET"])
    assert undeclared_routes(app) == ["GET /api/v1/sneaky"]


def test_authorization_matrix(app: FastAPI) -> None:
    with TestClient(app) as client:
        _matrix(app, client)


def _matrix(app: FastAPI, client: TestClient) -> None:
    table = app.state.router.table
    assert {(s.method, s.path) for s in table} == set(EXAMPLES), "add an example for each route"
    root = access().local("user:root")
    secrets = {
        (role, name): tokens().create(f"{role}-{name}", role, scope, who=root)[1]
        for role, (name, scope) in itertools.product(ROLES, SCOPES.items())
    }
    checked = 0
    for spec, role, tenant in itertools.product(table, ROLES, SCOPES):
        url, body = EXAMPLES[(spec.method, spec.path)]()
        resp = client.request(spec.method, url, json=body, headers={"Authorization": f"Bearer {secrets[role, tenant]}"},
                              follow_redirects=False)  # fmt: skip
        if spec.permission in (PUBLIC, SIGNED_IN):
            allowed = True
        else:
            resource = GLOBAL if (spec.method, spec.path) in GLOBAL_ROUTES else "tenant:acme"
            allowed = role_allows(role, spec.permission) and covers(SCOPES[tenant], resource)
        where = f"{spec.method} {spec.path} as {role}@{tenant}: {resp.status_code} {resp.text[:600]}"
        if spec.permission == PUBLIC:  # a sign-in step may answer 401 for a bogus callback, never 403
            assert resp.status_code != 403, where
        elif allowed:
            assert resp.status_code not in (401, 403), where
        else:
            assert resp.status_code == 403, where
        checked += 1
    assert checked == len(EXAMPLES) * len(ROLES) * len(SCOPES)
    refused = [e for e in _config.get_store().events("system") if e.type == "access.refused"]
    assert refused and all(e.data["via"] == "api" and e.data["token_id"] for e in refused)


def test_no_credentials_is_401_and_bad_tokens_are_rate_limited(app: FastAPI) -> None:
    client = TestClient(app)
    for spec in app.state.router.table:
        if spec.permission == PUBLIC:
            continue
        url, body = EXAMPLES[(spec.method, spec.path)]()
        assert client.request(spec.method, url, json=body).status_code == 401, spec
    codes = [client.get("/api/v1/me", headers={"Authorization": "Bearer wflo_bad"}).status_code for _ in range(25)]
    assert codes[:20] == [401] * 20 and codes[20:] == [429] * 5


def test_session_needs_csrf_for_changes(app: FastAPI) -> None:
    sid, csrf = tokens().open_session("user:root", ttl=__import__("datetime").timedelta(hours=1))
    client = TestClient(app, cookies={"wflo_session": sid})
    assert client.get("/api/v1/me").json()["via"] == "panel"
    body = {"principal": "user:x", "role": "viewer", "scope": "*"}
    assert client.post("/api/v1/grants", json=body).status_code == 403
    assert client.post("/api/v1/grants", json=body, headers={"X-CSRF-Token": "nope"}).status_code == 403
    assert client.post("/api/v1/grants", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201
    assert access().grants("user:x")[0].via == "panel"
    # An admin signs someone out everywhere: their session dies server-side.
    other, _ = tokens().open_session("user:other", ttl=__import__("datetime").timedelta(hours=1))
    out = client.post("/api/v1/sessions/revoke", json={"principal": "user:other"}, headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200
    assert TestClient(app, cookies={"wflo_session": other}).get("/api/v1/me").status_code == 401
    # A token cannot give more than it has: an operator token cannot grant admin.
    _, op = tokens().create("op", "operator", who=access().local("user:root"))
    resp = TestClient(app).post(
        "/api/v1/grants", json={**body, "role": "admin"}, headers={"Authorization": f"Bearer {op}"}
    )
    assert resp.status_code == 403


def test_access_log_lines_lose_their_query_string() -> None:
    """A sign-in callback URL carries the authorization code: it never reaches the log."""
    import logging

    from wflo.server._oidc import QueryRedactor

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/auth/callback?code=SECRETCODE&state=S", "1.1", 303), None,
    )  # fmt: skip
    assert QueryRedactor().filter(record)
    assert "SECRETCODE" not in record.getMessage() and "/auth/callback" in record.getMessage()


def test_budgets_through_the_api_are_scoped_and_recorded(app: FastAPI) -> None:
    """A tenant's budget-admin sets that tenant's limit (recorded with who and via: api), not
    another tenant's, and not a workflow's limit, which cuts across tenants."""
    root = access().local("user:root")
    _, acme = tokens().create("ba-acme", "budget-admin", "tenant:acme", who=root)
    _, everywhere = tokens().create("ba-all", "budget-admin", GLOBAL, who=root)
    client = TestClient(app)

    def put(secret: str, scope: str, usd: str = "7") -> int:
        body = {"scope": scope, "usd": usd, "period": "day"}
        return client.put("/api/v1/budgets", json=body, headers={"Authorization": f"Bearer {secret}"}).status_code

    assert put(acme, "tenant:acme") == 200
    assert put(acme, "tenant:globex") == 403
    assert put(acme, "workflow:refunds") == 403
    assert put(everywhere, "workflow:refunds") == 200
    assert put(everywhere, "nonsense") == 400  # a bad scope is the caller's mistake, named
    set_events = [e.data for e in _config.get_store().events("system") if e.type == "budget.set"]
    assert [(e["scope"], e["by"], e["via"]) for e in set_events] == [
        ("tenant:acme", "service:ba-acme", "api"),
        ("workflow:refunds", "service:ba-all", "api"),
    ]
    listed = client.get("/api/v1/budgets?tenant=acme", headers={"Authorization": f"Bearer {acme}"}).json()
    assert [b["scope"] for b in listed] == ["tenant:acme"] and listed[0]["limit_usd"] == "7"
