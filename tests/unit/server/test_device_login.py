"""Device sign-in for the CLI (RFC 8628 style) through the real app on both stores: the codes,
the verification page behind a real session and its CSRF token, approval and denial on the
record, the token collected once, and each attack the brief names tried."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from wflo import _config
from wflo.auth import access, tokens
from wflo.server import create_app

ANN = "user:ann@acme.com"
GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
def app(configured: str) -> FastAPI:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    acc.grant(ANN, "approver", "tenant:acme", who=acc.local("user:root"))
    made = create_app()
    made.state.devices.interval = 0  # polls may follow each other at once (slow_down has its own test)
    return made


def browser(app: FastAPI, principal: str = ANN) -> tuple[TestClient, str]:
    """A client holding a real session of ``principal`` (cookies as the OIDC callback sets them)."""
    sid, csrf = tokens().open_session(principal, ttl=timedelta(hours=1))
    client = TestClient(app)
    client.cookies.set("wflo_session", sid)
    client.cookies.set("wflo_csrf", csrf)
    return client, csrf


def start(cli: TestClient) -> dict[str, Any]:
    resp = cli.post("/auth/device", data={"client": "wflo CLI, ann on laptop"}, headers={"User-Agent": "pytest"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    return dict(resp.json())


def poll(cli: TestClient, device_code: str) -> tuple[int, dict[str, Any]]:
    resp = cli.post("/auth/device/token", data={"grant_type": GRANT, "device_code": device_code})
    return resp.status_code, dict(resp.json())


def events(kind: str) -> list[dict[str, Any]]:
    return [e.data for e in _config.get_store().events("system") if e.type == kind]


def test_approve_in_the_browser_and_collect_the_token_once(app: FastAPI) -> None:
    cli = TestClient(app)
    got = start(cli)
    code, device_code = got["user_code"], got["device_code"]
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", code)
    assert got["verification_uri"] == "http://testserver/auth/device/verify"
    assert got["verification_uri_complete"] == f"http://testserver/auth/device/verify?code={code}"
    assert (got["expires_in"], got["interval"]) == (600, 0) and len(device_code) >= 43
    assert poll(cli, device_code) == (400, {"error": "authorization_pending",
                                            "error_description": "waiting for the person to approve in the browser"})  # fmt: skip

    # Not signed in: through the sign-in page and back to this very page.
    away = cli.get(f"/auth/device/verify?code={code}", follow_redirects=False)
    assert away.status_code == 303
    assert unquote(away.headers["location"]) == f"/auth/login?next=/auth/device/verify?code={code}"

    person, csrf = browser(app)
    page = person.get(f"/auth/device/verify?code={code.lower()}")  # typed in lower case: the same code
    assert page.status_code == 200 and code in page.text and "wflo CLI, ann on laptop (pytest)" in page.text
    assert "approver@tenant:acme" in page.text and ANN in page.text and "testclient" in page.text
    assert f"name='csrf' value='{csrf}'" in page.text
    done = person.post("/auth/device/verify", data={"code": code, "decision": "approve", "csrf": csrf})
    assert done.status_code == 200 and "Approved" in done.text, done.text

    status, body = poll(cli, device_code)
    assert status == 200 and body["token_type"] == "Bearer" and body["access_token"].startswith("wflo_")
    me = cli.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"}).json()
    assert (me["principal"], me["via"]) == (ANN, "api")
    assert me["grants"] == [{"role": "approver", "scope": "tenant:acme"}]
    # Once only: the same device code again gets nothing.
    assert poll(cli, device_code)[1]["error"] == "invalid_grant"

    approved = events("auth.device_approved")
    assert len(approved) == 1 and approved[0]["by"] == ANN and approved[0]["via"] == "panel"
    assert approved[0]["user_code"] == code and approved[0]["client_remote"] == "testclient"
    created = [e for e in events("token.created") if e["principal"] == ANN]
    assert len(created) == 1 and created[0]["token_id"] == approved[0]["token_id"]
    # Neither the device code nor the token is on the chain or in the table.
    st = _config.get_store()
    chain = json.dumps([e.data for e in st.events("system")])
    rows = json.dumps([list(map(str, r)) for r in st.read("SELECT * FROM device_requests")])
    for secret in (device_code, body["access_token"]):
        assert secret not in chain and secret not in rows
    assert st.read("SELECT status, sealed_token, sealed_key FROM device_requests") == [("collected", None, "")]


def test_the_device_code_and_the_approved_token_are_stored_sealed(app: FastAPI) -> None:
    """Between approval and collection the token waits encrypted to the request's key, whose
    private half only the device code opens: a copy of the database gives neither away."""
    cli = TestClient(app)
    got = start(cli)
    person, csrf = browser(app)
    person.post("/auth/device/verify", data={"code": got["user_code"], "decision": "approve", "csrf": csrf})
    st = _config.get_store()
    (row,) = st.read("SELECT digest, public_key, sealed_key, sealed_token, status FROM device_requests")
    assert row[4] == "approved" and row[3].count(".") == 4 and row[2].count(".") == 4  # two JWEs
    assert got["device_code"] not in json.dumps(row) and "wflo_" not in json.dumps(row)
    if st.url.startswith("sqlite"):
        data = Path(st.url.removeprefix("sqlite:///")).read_bytes()
        assert got["device_code"].encode() not in data and not re.search(rb"wflo_[0-9a-f]{8}_", data)
    token = poll(cli, got["device_code"])[1]["access_token"]
    if st.url.startswith("sqlite"):
        assert token.encode() not in Path(st.url.removeprefix("sqlite:///")).read_bytes()


def test_deny_is_recorded_and_the_cli_hears_access_denied(app: FastAPI) -> None:
    cli = TestClient(app)
    got = start(cli)
    person, csrf = browser(app)
    done = person.post("/auth/device/verify", data={"code": got["user_code"], "decision": "deny", "csrf": csrf})
    assert done.status_code == 200 and "Denied" in done.text
    assert poll(cli, got["device_code"])[1]["error"] == "access_denied"
    assert events("auth.device_denied")[0]["by"] == ANN and events("auth.device_approved") == []
    assert [e for e in events("token.created") if e["principal"] == ANN] == []
    # Decided: approving it afterwards changes nothing.
    again = person.post("/auth/device/verify", data={"code": got["user_code"], "decision": "approve", "csrf": csrf})
    assert again.status_code == 400 and poll(cli, got["device_code"])[1]["error"] == "access_denied"


def test_an_expired_request_can_be_neither_approved_nor_collected(app: FastAPI) -> None:
    cli = TestClient(app)
    got = start(cli)
    person, csrf = browser(app)
    st = _config.get_store()
    st.write(lambda cur: st.execute(cur, "UPDATE device_requests SET expires_at = ?", (st.now(-1, cur=cur),)))
    assert person.get(f"/auth/device/verify?code={got['user_code']}").status_code == 404
    late = person.post("/auth/device/verify", data={"code": got["user_code"], "decision": "approve", "csrf": csrf})
    assert late.status_code == 400 and "no pending sign-in request" in late.text
    assert poll(cli, got["device_code"])[1]["error"] == "expired_token"
    assert events("auth.device_approved") == [] and st.read("SELECT status FROM device_requests") == [("pending",)]


def test_wrong_device_codes_are_refused_then_throttled(app: FastAPI) -> None:
    cli = TestClient(app)
    got = start(cli)
    assert poll(cli, "not-a-code")[1]["error"] == "invalid_grant"
    assert poll(cli, "")[1]["error"] == "invalid_grant"
    bad = cli.post("/auth/device/token", data={"grant_type": "password", "device_code": got["device_code"]})
    assert bad.json()["error"] == "unsupported_grant_type"
    for i in range(18):
        poll(cli, f"guess-{i}")
    status, body = poll(cli, got["device_code"])  # 20 unknown codes from this address: even a good one waits
    assert status == 429 and body["error"] == "slow_down"
    failed = [e for e in events("auth.failed") if e["via"] == "device"]
    assert len(failed) == 20 and failed[0]["remote"] == "testclient" and "guess-0" not in json.dumps(failed)


def test_guessing_user_codes_is_throttled(app: FastAPI) -> None:
    cli = TestClient(app)
    got = start(cli)
    person, csrf = browser(app)
    for i in range(10):
        assert person.get(f"/auth/device/verify?code=BCDF-GH{i:02d}").status_code == 404
    for _ in range(10):
        wrong = person.post("/auth/device/verify", data={"code": "ZZZZ-ZZZZ", "decision": "approve", "csrf": csrf})
        assert wrong.status_code == 400
    # 20 wrong codes: the right one is refused too until the minute has passed.
    assert person.get(f"/auth/device/verify?code={got['user_code']}").status_code == 429
    late = person.post("/auth/device/verify", data={"code": got["user_code"], "decision": "approve", "csrf": csrf})
    assert late.status_code == 429 and events("auth.device_approved") == []
    failed = events("auth.failed")
    assert len(failed) == 20 and {(e["by"], e["via"], e["remote"]) for e in failed} == {(ANN, "panel", "testclient")}
    # Counted per person as well: the same person from another address is throttled too.
    assert any(r[0] == f"device-code:{ANN}" for r in _config.get_store().read("SELECT key FROM signin_attempts"))


def test_approval_needs_a_browser_session_and_its_csrf_token(app: FastAPI) -> None:
    cli = TestClient(app)
    got = start(cli)
    form = {"code": got["user_code"], "decision": "approve"}
    assert TestClient(app).post("/auth/device/verify", data=form).status_code == 401  # no session
    person, csrf = browser(app)
    assert person.post("/auth/device/verify", data=form).status_code == 403  # no CSRF token
    assert person.post("/auth/device/verify", data={**form, "csrf": "forged"}).status_code == 403
    stale, _ = browser(app)
    stale.cookies.set("wflo_session", "revoked-or-made-up")
    assert stale.post("/auth/device/verify", data={**form, "csrf": csrf}).status_code == 401
    # An API token (even ann's own) cannot approve: only a person in the browser.
    _, secret = tokens().create("bot", "admin", who=access().local("user:root"))
    api = TestClient(app).post("/auth/device/verify", data=form, headers={"Authorization": f"Bearer {secret}"})
    assert api.status_code == 400
    assert poll(cli, got["device_code"])[1]["error"] == "authorization_pending"
    assert events("auth.device_approved") == []


def test_polling_faster_than_the_interval_gets_slow_down(app: FastAPI) -> None:
    app.state.devices.interval = 30
    cli = TestClient(app)
    got = start(cli)
    assert got["interval"] == 30
    assert poll(cli, got["device_code"])[1]["error"] == "authorization_pending"
    assert poll(cli, got["device_code"])[1]["error"] == "slow_down"
    st = _config.get_store()
    assert st.read("SELECT interval_s FROM device_requests") == [(35,)]  # RFC 8628: 5 s more from now on
    # Waited long enough (the last poll moved back in time): pending again, not slow_down.
    st.write(lambda cur: st.execute(cur, "UPDATE device_requests SET polled_at = ?", (st.now(-40, cur=cur),)))
    assert poll(cli, got["device_code"])[1]["error"] == "authorization_pending"


def test_opening_requests_is_rate_limited(app: FastAPI) -> None:
    cli = TestClient(app)
    for _ in range(20):
        assert cli.post("/auth/device", data={"client": "x"}).status_code == 200
    assert cli.post("/auth/device", data={"client": "x"}).status_code == 429


def test_a_request_decided_meanwhile_is_not_approved_again(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two people (or two tabs) press Approve and Deny on the same page: the second decision,
    checked in its own transaction, writes nothing, not even the token it would have made."""
    cli = TestClient(app)
    got = start(cli)
    devices = app.state.devices
    seen = devices.find(got["user_code"])  # what the second page showed
    person, csrf = browser(app)
    person.post("/auth/device/verify", data={"code": got["user_code"], "decision": "deny", "csrf": csrf})
    monkeypatch.setattr(devices, "find", lambda code: seen)  # that page's view: still pending
    late = person.post("/auth/device/verify", data={"code": got["user_code"], "decision": "approve", "csrf": csrf})
    assert late.status_code == 400 and "decided already" in late.text
    assert [e for e in events("token.created") if e["principal"] == ANN] == [] and events("auth.device_approved") == []
    assert _config.get_store().read("SELECT COUNT(*) FROM api_tokens WHERE principal = ?", (ANN,)) == [(0,)]
    assert poll(cli, got["device_code"])[1]["error"] == "access_denied"
