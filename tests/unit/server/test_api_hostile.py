"""The API against a hostile client, on both stores: what a fuzzer (schemathesis) sent that
answered 500, or not in the one error shape, or did more than asked. Each answer is a 4xx
``{"error": {"code", "message"}}`` that names the mistake, and nothing is done."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from wflo import _config
from wflo.auth import access, tokens

DOC = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
MAX_BODY = 1 << 20  # wflo.server._routes.MAX_BODY


@pytest.fixture
def admin() -> dict[str, str]:
    _, secret = tokens().create(f"admin-{uuid.uuid4().hex[:6]}", "admin", who=access().local("user:root"))
    return {"Authorization": f"Bearer {secret}"}


def make_run(workflow: str = "wf") -> str:
    rid = f"run-{uuid.uuid4().hex[:10]}"
    _config.get_store().create_run(run_id=rid, workflow=workflow, input={"args": [], "kwargs": {}})
    return rid


def error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body: dict[str, Any] = resp.json()["error"]
    assert isinstance(body["code"], str) and isinstance(body["message"], str) and body["message"], body
    return body


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "/api/v1/runs/a%00b", None),
        ("GET", "/api/v1/runs/a%00b/events", None),
        ("POST", "/api/v1/runs/a%00b/cancel", None),
        ("GET", "/api/v1/approvals/a%00b", None),
        ("DELETE", "/api/v1/tokens/a%00b", None),
        ("GET", "/api/v1/runs?tenant=a%00b", None),
        ("GET", "/api/v1/runs?q=a%00b", None),
        ("GET", "/api/v1/costs?tenant=a%00b", None),
        ("GET", "/api/v1/budgets/usage?scope=a%00b", None),
        ("POST", "/api/v1/grants", {"principal": "user:a\x00b", "role": "viewer"}),
        ("POST", "/api/v1/tokens", {"name": "ok", "role": "viewer", "scope": "tenant:a\x00b"}),
        ("PUT", "/api/v1/budgets", {"scope": "tenant:a\x00b", "usd": "5", "period": "day"}),
        ("POST", "/api/v1/runs/bulk", {"action": "cancel", "filter": {"workflow": "a\x00b"}}),
        ("POST", "/api/v1/sessions/revoke", {"principal": "user:a\x00b"}),
    ],
)
def test_a_nul_character_is_refused_before_it_reaches_the_store(
    client: TestClient, admin: dict[str, str], method: str, path: str, body: Any
) -> None:
    # On PostgreSQL each of these answered 500 (text cannot hold NUL); on SQLite some stored it.
    resp = client.request(method, path, json=body, headers=admin)
    assert "NUL" in error(resp, 422)["message"]
    grants = client.get("/api/v1/grants", headers=admin).json()
    assert "\x00" not in json.dumps(grants, ensure_ascii=False), grants


def test_a_forged_cursor_holding_nul_is_refused(client: TestClient, admin: dict[str, str]) -> None:
    forged = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00Z", "a\x00b"]).encode()).decode()
    assert "cursor" in error(client.get(f"/api/v1/runs?cursor={forged}", headers=admin), 422)["message"]


def test_a_405_names_every_method_of_the_path(client: TestClient, admin: dict[str, str]) -> None:
    # GET and PUT /api/v1/budgets are two routes: the 405 said "Allow: GET" only.
    resp = client.delete("/api/v1/budgets", headers=admin)
    assert error(resp, 405)["code"] == "method_not_allowed"
    assert resp.headers["allow"] == "GET, PUT"


def test_a_body_over_the_limit_is_413_before_anything_else(client: TestClient, admin: dict[str, str]) -> None:
    big = b'{"name": "big", "role": "viewer", "x": "' + b"x" * MAX_BODY + b'"}'
    # Not signed in either: the body was read whole (any size) before the 401.
    resp = client.post("/api/v1/tokens", content=big, headers={"Content-Type": "application/json"})
    assert error(resp, 413)["code"] == "too_large"
    # Without a Content-Length (chunked), it is refused as it arrives.
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    resp = client.post("/api/v1/tokens", content=chunks, headers={**admin, "Content-Type": "application/json"})
    assert error(resp, 413)["code"] == "too_large"
    assert "big" not in json.dumps(client.get("/api/v1/tokens", headers=admin).json())


def test_a_binary_answer_with_an_idempotency_key_is_not_mangled(client: TestClient, admin: dict[str, str]) -> None:
    headers = {**admin, "Idempotency-Key": "export-1"}
    first = client.post("/api/v1/audit/export", json={}, headers=headers)
    assert first.status_code == 200 and first.content.startswith(b"PK"), first.text[:200]
    # The ZIP was kept as UTF-8 text with replacement characters (a corrupt replay on SQLite) or,
    # on PostgreSQL, not at all (text cannot hold NUL: the key stayed "in progress").
    again = client.post("/api/v1/audit/export", json={}, headers=headers)
    assert "was done (status 200)" in error(again, 409)["message"]


def test_a_bug_answers_500_in_the_error_shape(app: FastAPI, admin: dict[str, str]) -> None:
    def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/api/v1/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/api/v1/broken", headers=admin)
    body = error(resp, 500)
    assert body["code"] == "internal_error" and "a bug" not in resp.text  # the log has it, not the client


@pytest.mark.parametrize(
    "path,status",
    [
        ("/api/v1/runs?since=999999999d", 422),
        ("/api/v1/runs?until=9999-12-31T23:59:59-23:59", 422),
        ("/api/v1/costs?since=999999999d", 400),
        ("/api/v1/runs?min_cost_usd=1e999999", 422),
    ],
)
def test_times_and_amounts_past_what_can_be_written_are_refused(
    client: TestClient, admin: dict[str, str], path: str, status: int
) -> None:
    error(client.get(path, headers=admin), status)


@pytest.mark.parametrize("usd", ["1e999999", "1" + "0" * 5000, "1e-999999"])
def test_a_budget_no_database_number_holds_is_refused(client: TestClient, admin: dict[str, str], usd: str) -> None:
    # Stored as text, then cast to NUMERIC by the ledger: every reservation on the scope failed.
    resp = client.put("/api/v1/budgets", json={"scope": "tenant:acme", "usd": usd, "period": "day"}, headers=admin)
    assert "from 1e-18 to 1,000,000,000,000 USD" in error(resp, 400)["message"]
    assert client.get("/api/v1/budgets", headers=admin).json() == []


def test_a_token_that_expires_after_any_date_is_refused(client: TestClient, admin: dict[str, str]) -> None:
    resp = client.post(
        "/api/v1/tokens", json={"name": "far", "role": "viewer", "expires": "99999999999d"}, headers=admin
    )
    assert "at most" in error(resp, 400)["message"]


def test_a_token_named_like_another_tokens_id_does_not_shield_it(client: TestClient, admin: dict[str, str]) -> None:
    made = client.post("/api/v1/tokens", json={"name": "victim", "role": "viewer"}, headers=admin).json()
    # A token may be named like a uuid: its name then matched the id, and revoking by id said
    # "names several tokens: use its id".
    client.post("/api/v1/tokens", json={"name": made["id"], "role": "viewer"}, headers=admin)
    resp = client.delete(f"/api/v1/tokens/{made['id']}", headers=admin)
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == made["id"] and resp.json()["revoked_at"]


def test_revoking_an_unknown_token_is_404(client: TestClient, admin: dict[str, str]) -> None:
    """It answered 400 (a ``UserError``), unlike every other unknown resource; a name or a
    prefix is not an id either (the path names one, and the scope is judged on it)."""
    made = client.post("/api/v1/tokens", json={"name": "named", "role": "viewer"}, headers=admin).json()
    for ref in (str(uuid.uuid4()), "named", made["prefix"]):
        assert error(client.delete(f"/api/v1/tokens/{ref}", headers=admin), 404)["code"] == "not_found"
    kept = tokens().get(made["id"])
    assert kept is not None and kept.revoked_at is None


def test_a_tenants_grant_does_not_reach_a_tenant_named_below_it(client: TestClient, admin: dict[str, str]) -> None:
    """A grant on ``tenant:acme`` reached a run of tenant ``acme/x`` (its scope
    ``tenant:acme/x`` began with ``tenant:acme/``). Such a tenant stored before '/' was refused
    in names stays readable by global grants."""
    st = _config.get_store()
    st.create_run(run_id="r-below", workflow="wf", input={}, tenant="acme/x")
    st.create_run(run_id="r-acme", workflow="wf", input={}, tenant="acme")
    _, secret = tokens().create("acme-op", "operator", "tenant:acme", who=access().local("user:root"))
    acme = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/runs/r-acme", headers=acme).status_code == 200
    error(client.get("/api/v1/runs/r-below", headers=acme), 403)
    error(client.get("/api/v1/runs", params={"tenant": "acme/x"}, headers=acme), 403)
    error(client.post("/api/v1/runs/r-below/cancel", headers=acme), 403)
    body = {"scope": "tenant:acme/x", "usd": "1", "period": "day"}
    _, budgets = tokens().create("acme-budgets", "budget-admin", "tenant:acme", who=access().local("user:root"))
    error(client.put("/api/v1/budgets", json=body, headers={"Authorization": f"Bearer {budgets}"}), 403)
    assert client.get("/api/v1/runs/r-below", headers=admin).json()["tenant"] == "acme/x"


def test_events_after_a_huge_seq_are_none(client: TestClient, admin: dict[str, str]) -> None:
    rid = make_run()
    for after in (2**63, 10**30):
        resp = client.get(f"/api/v1/runs/{rid}/events?after={after}", headers=admin)
        assert resp.status_code == 200, resp.text
        assert resp.json()["items"] == [] and resp.json()["next_after"] is None


def test_bulk_with_a_misspelt_field_acts_on_nothing(client: TestClient, admin: dict[str, str]) -> None:
    rid = make_run()
    # "ids" is no field: once ignored, the empty filter cancelled every active run.
    resp = client.post("/api/v1/runs/bulk", json={"action": "cancel", "ids": ["other"]}, headers=admin)
    assert "ids" in error(resp, 422)["message"]
    assert _config.get_store().get_run(rid).status == "queued"


def test_idempotency_key_is_printable_ascii(client: TestClient, admin: dict[str, str]) -> None:
    headers: dict[str, Any] = {**admin, "Idempotency-Key": "clé".encode()}  # as bytes: read as latin-1
    resp = client.post("/api/v1/tokens", json={"name": "k", "role": "viewer"}, headers=headers)
    assert "ASCII" in error(resp, 400)["message"]


def test_the_document_says_every_error_is_the_error_shape() -> None:
    doc = json.loads(DOC.read_text())
    error_ref = {"$ref": "#/components/schemas/Error"}
    assert doc["components"]["schemas"]["Error"]["required"] == ["error"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            if "422" in responses:
                assert responses["422"]["content"]["application/json"]["schema"] == error_ref, (method, path)
            if path.startswith("/api/v1/"):
                assert responses["default"]["content"]["application/json"]["schema"] == error_ref, (method, path)


def test_a_run_id_holding_a_slash_is_reachable(client: TestClient, admin: dict[str, str]) -> None:
    # LangGraph's thread ids become run ids ("user-1/conv-2"); links encode the "/" as %2F, which
    # the router sees decoded: the run's routes take the rest of the path as its id.
    rid = f"user-1/conv-{uuid.uuid4().hex[:6]}"
    _config.get_store().create_run(run_id=rid, workflow="wf", input={"args": [], "kwargs": {}})
    quoted = rid.replace("/", "%2F")
    for path in (f"/api/v1/runs/{quoted}", f"/api/v1/runs/{rid}"):
        got = client.get(path, headers=admin)
        assert got.status_code == 200 and got.json()["id"] == rid, (path, got.text[:300])
    events = client.get(f"/api/v1/runs/{quoted}/events", headers=admin)
    assert events.status_code == 200 and events.json()["items"][0]["seq"] == 1, events.text[:300]
    cancel = client.post(f"/api/v1/runs/{quoted}/cancel", headers=admin)
    assert cancel.status_code == 200, cancel.text[:300]
    assert _config.get_store().get_run(rid).status == "cancelled"
    page = client.get(f"/runs/{quoted}", headers=admin)
    assert page.status_code == 200 and "run-page" in page.text
    # (An id ending in "/events", "/cancel", "/resume" or "/retry" reaches that route of the id
    # before it: the one ambiguity left.) The routes' own words still route.
    error(client.get("/api/v1/runs/no-such-run/events", headers=admin), 404)
    error(client.get("/api/v1/runs/no/such/run", headers=admin), 404)
