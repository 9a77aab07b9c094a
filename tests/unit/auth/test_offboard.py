"""Offboarding on both stores: disabling and enabling a principal, releasing a person's OIDC
binding. Through the library and the REST API, with the hostile paths: a disabled person's
session cookie, personal token, device sign-in in progress, first-start link and vote (also a
vote sent while the disable is being written), and who may not do any of it."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from wflo import _config
from wflo.approvals import inbox
from wflo.auth import ClaimsPolicy, DeviceRequests, Identities, Principal, access, tokens
from wflo.auth import _identities as identities_module
from wflo.errors import ApprovalForbiddenError, AuthenticationError, UserError
from wflo.server import create_app
from wflo.server._firstrun import FirstSignIn
from wflo.server._routes import SESSION_COOKIE

ANN = "user:ann@acme.com"
ISSUER = "https://idp.example"


@pytest.fixture
def app(configured: str) -> FastAPI:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    return create_app()


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app)


def root() -> Principal:
    return access().local("user:root")


def bearer(role: str, scope: str = "*") -> dict[str, str]:
    secret = tokens().create(f"{role}-{uuid.uuid4().hex[:6]}", role, scope, who=root())[1]
    return {"Authorization": f"Bearer {secret}"}


def sign_in_ann(sub: str = "ann-1") -> str:
    claims = {"iss": ISSUER, "sub": sub, "email": "ann@acme.com", "email_verified": True, "name": "Ann"}
    return Identities(access()).login(claims, ClaimsPolicy(), via="panel", remote="10.0.0.5")


def system(kind: str) -> list[Any]:
    return [e for e in _config.get_store().events("system") if e.type == kind]


def test_disable_ends_sessions_and_personal_tokens_keeps_made_tokens_and_is_recorded(client: TestClient) -> None:
    sign_in_ann()
    access().grant(ANN, "admin", "tenant:acme", who=root())
    sid, _ = tokens().open_session(ANN, ttl=timedelta(hours=1))
    ann = access().of(ANN, "panel")
    personal, personal_secret = tokens().create_personal(ann)
    made, made_secret = tokens().create("etl-bot", "operator", "tenant:acme", who=ann)
    client.cookies.set(SESSION_COOKIE, sid)
    assert client.get("/api/v1/me").status_code == 200
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {personal_secret}"}).status_code == 200
    client.cookies.clear()

    admin = bearer("admin")
    resp = client.post("/api/v1/users/disable", json={"principal": ANN, "reason": "left the company"}, headers=admin)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["action"], out["principal"], out["reason"], out["sessions_ended"]) == (
        "disabled", ANN, "left the company", 1,
    )  # fmt: skip
    assert [t["id"] for t in out["tokens_revoked"]] == [personal.id]
    # The service account's token she made keeps working; the admin is told about it.
    assert [(t["id"], t["principal"]) for t in out["tokens_made"]] == [(made.id, "service:etl-bot")]

    # Her session cookie and her personal token are refused at once.
    client.cookies.set(SESSION_COOKIE, sid)
    assert client.get("/api/v1/me").status_code == 401
    client.cookies.clear()
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {personal_secret}"}).status_code == 401
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {made_secret}"})
    assert me.status_code == 200 and me.json()["principal"] == "service:etl-bot"

    # On the system chain: who, why, what ended, what still works.
    [event] = system("principal.disabled")
    assert (event.data["by"], event.data["via"], event.data["principal"], event.data["reason"]) == (
        "service:" + event.data["by"].split(":", 1)[1], "api", ANN, "left the company",
    )  # fmt: skip
    assert event.data["token_id"] and [t["id"] for t in event.data["tokens_made"]] == [made.id]
    listed = {u["id"]: u for u in client.get("/api/v1/users", headers=admin).json()}[ANN]
    assert listed["disabled"] and listed["disabled_reason"] == "left the company"
    assert listed["disabled_by"] == event.data["by"] and (listed["sessions"], listed["tokens"]) == (0, 0)

    # Signing in again through the provider is refused while she is disabled.
    with pytest.raises(AuthenticationError, match="disabled"):
        sign_in_ann()
    # Enabled again: she signs in afresh; nothing revoked comes back.
    back = client.post("/api/v1/users/enable", json={"principal": ANN, "reason": "rehired"}, headers=admin)
    assert back.status_code == 200 and back.json()["action"] == "enabled"
    assert [e.data["reason"] for e in system("principal.enabled")] == ["rehired"]
    assert sign_in_ann() == ANN
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {personal_secret}"}).status_code == 401
    client.cookies.set(SESSION_COOKIE, sid)
    assert client.get("/api/v1/me").status_code == 401
    sid2, _ = tokens().open_session(ANN, ttl=timedelta(hours=1))
    client.cookies.set(SESSION_COOKIE, sid2)
    assert client.get("/api/v1/me").json()["principal"] == ANN


def test_a_session_or_token_made_while_disabled_is_refused(configured: str) -> None:
    """A session or token written after the disable (a sign-in that raced it) is refused on use."""
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    sign_in_ann()
    ann = acc.of(ANN, "panel")
    Identities(acc).disable(ANN, reason="offboarded", who=root())
    sid, _ = tokens().open_session(ANN, ttl=timedelta(hours=1))
    with pytest.raises(AuthenticationError, match="disabled"):
        tokens().session(sid)
    with pytest.raises(UserError, match="disabled"):
        tokens().create_personal(ann)
    # A disabled service account gets no new token, and its old ones stop.
    _, bot = tokens().create("bot", "viewer", who=root())
    Identities(acc).disable("service:bot", reason="compromised", who=root())
    with pytest.raises(AuthenticationError, match="revoked"):
        tokens().authenticate(bot)
    with pytest.raises(UserError, match="service:bot is disabled"):
        tokens().create("bot", "viewer", who=root())


def test_device_sign_in_in_progress_gets_no_token(configured: str) -> None:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    sign_in_ann()
    ann = acc.of(ANN, "panel")
    devices = DeviceRequests(acc, interval=0)
    approved = devices.start("ann's laptop")
    devices.approve(approved.user_code, ann)  # approved in the browser, not collected yet
    pending = devices.start("someone's laptop")
    Identities(acc).disable(ANN, reason="left", who=root())
    poll = devices.collect(approved.device_code)
    assert (poll.token, poll.error) == (None, "access_denied")
    # A request still waiting cannot be approved by her any more.
    with pytest.raises(UserError, match="disabled"):
        devices.approve(pending.user_code, ann)
    assert devices.collect(pending.device_code).error == "authorization_pending"
    [event] = system("principal.disabled")
    assert len(event.data["tokens_revoked"]) == 1  # the personal token the approval made


def test_first_signin_link_of_a_disabled_principal_is_void(configured: str) -> None:
    acc = access()
    code = FirstSignIn(acc).issue("user:eve")
    assert code is not None
    acc.bootstrap("user:root", who=acc.local("user:root"))
    Identities(acc).disable("user:eve", reason="not her deployment", who=root())
    acc.revoke("user:root", "admin", who=root())  # no admin left: the link would work again
    with pytest.raises(Exception, match="user:eve is disabled"):
        FirstSignIn(acc).redeem(code, remote="10.0.0.9")
    assert not acc.has_admin()
    assert system("auth.failed")[-1].data["reason"] == "user:eve is disabled"


def _request(approvers: list[str]) -> str:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    _config.get_store().create_run(run_id=run_id, workflow="wf", input={}, tenant="acme")
    req, _ = inbox().create(
        approval_id=f"ap-{run_id}", run_id=run_id, call_id="c1", tool="refund", message="refund",
        action={"tool": "refund", "kwargs": {}}, approvers=approvers, quorum=1, requested_by="user:requester",
        timeout_at=None, on_timeout="reject", escalate_to=[],
    )  # fmt: skip
    return req.id


def test_a_disabled_person_may_not_decide(configured: str) -> None:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    sign_in_ann()
    acc.grant(ANN, "approver", "tenant:acme", who=root())
    by_name, by_role = _request([ANN]), _request(["role:approver"])
    assert inbox().may_decide(inbox().get(by_role), ANN, authenticated=True)
    Identities(acc).disable(ANN, reason="left", who=root())
    for approval_id in (by_name, by_role):
        assert inbox().why_not(inbox().get(approval_id), ANN) == f"{ANN} is disabled"
        with pytest.raises(ApprovalForbiddenError, match="disabled"):
            inbox().decide(approval_id, "approve", principal=ANN, authenticated=True)
        assert inbox().get(approval_id).status == "pending" and inbox().votes(approval_id) == []


@pytest.mark.parametrize("who", [ANN, "user:bo@acme.com"])
def test_a_vote_sent_while_the_disable_is_written_waits_and_is_refused(
    configured: str, monkeypatch: pytest.MonkeyPatch, who: str
) -> None:
    """The disable's transaction is held open (its sessions are being ended) while her vote
    comes in: the vote waits for it, then sees her disabled. Checked before the vote's
    transaction only, the vote was cast by a person disabled a moment earlier. Bo never
    signed in through the provider (no identity row until the disable writes one)."""
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    if who == ANN:
        sign_in_ann()
    else:
        acc.grant(who, "viewer", "tenant:acme", who=root())
    approval_id = _request([who])
    inside, real = threading.Event(), identities_module._sign_out

    def slow_sign_out(*args: Any) -> None:
        real(*args)
        inside.set()
        time.sleep(1.5)  # the disable has written its row and not committed yet

    monkeypatch.setattr(identities_module, "_sign_out", slow_sign_out)
    outcome: list[BaseException | str] = []

    def vote() -> None:
        inside.wait(10)
        try:
            inbox().decide(approval_id, "approve", principal=who, authenticated=True)
            outcome.append("voted")
        except BaseException as exc:
            outcome.append(exc)

    voter = threading.Thread(target=vote)
    voter.start()
    Identities(acc).disable(who, reason="left", who=root())
    voter.join(20)
    assert len(outcome) == 1 and isinstance(outcome[0], ApprovalForbiddenError), outcome
    assert "disabled" in str(outcome[0])
    assert inbox().get(approval_id).status == "pending" and inbox().votes(approval_id) == []


def test_who_may_disable_and_bad_input(client: TestClient) -> None:
    sign_in_ann()
    admin = bearer("admin")

    def post(path: str, body: dict[str, Any], headers: dict[str, str] = admin) -> Any:
        return client.post(f"/api/v1/users/{path}", json=body, headers=headers)

    # Non-admins, and an admin of one tenant only: 403, recorded.
    for headers in (bearer("operator"), bearer("auditor"), bearer("admin", "tenant:acme")):
        assert post("disable", {"principal": ANN, "reason": "x"}, headers).status_code == 403
    assert system("access.refused")[-1].data["permission"] == "users:write"
    assert post("disable", {"principal": "user:nobody@acme.com", "reason": "x"}).status_code == 404
    assert post("unbind", {"principal": "user:nobody@acme.com", "reason": "x"}).status_code == 404
    for body, status, words in [
        ({"principal": ANN}, 400, "reason"),
        ({"principal": ANN, "reason": "   "}, 400, "reason"),
        ({"principal": ANN, "reason": "a\x07b"}, 400, "control"),
        ({"principal": ANN, "reason": "x" * 501}, 422, ""),
        ({"principal": "ann", "reason": "x"}, 400, "principal must look like"),
        ({"principal": "group:ops", "reason": "x"}, 400, "not a group"),
        ({"reason": "x"}, 422, ""),
        ({"principal": ["user:a"], "reason": "x"}, 422, ""),
    ]:
        resp = post("disable", body)
        assert resp.status_code == status and words in resp.text, (body, resp.status_code, resp.text)
    assert post("enable", {"principal": ANN}).json()["error"]["message"] == f"{ANN} is not disabled"
    assert post("disable", {"principal": ANN, "reason": "left"}).status_code == 200
    again = post("disable", {"principal": ANN, "reason": "left"})
    assert again.status_code == 400 and "disabled already" in again.text
    assert system("principal.disabled") and len(system("principal.disabled")) == 1


def test_no_self_disable_and_never_the_last_admin(configured: str) -> None:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    people = Identities(acc)
    with pytest.raises(UserError, match="may not disable yourself"):
        people.disable("user:root", reason="oops", who=root())
    # An admin's service token may not disable the only admin person either.
    _, secret = tokens().create("admin-bot", "admin", who=root())
    bot = tokens().authenticate(secret)
    with pytest.raises(UserError, match="last enabled admin"):
        people.disable("user:root", reason="takeover", who=bot)
    acc.grant("user:second", "admin", who=root())
    people.disable("user:root", reason="rotating", who=bot)
    # Now user:second is the last enabled admin; a disabled admin counts for nothing.
    with pytest.raises(UserError, match="last enabled admin"):
        people.disable("user:second", reason="x", who=bot)
    # And a disabled admin acting locally is refused, recorded.
    with pytest.raises(Exception, match="user:root is disabled"):
        people.disable("service:admin-bot", reason="revenge", who=root())
    assert system("access.refused")[-1].data["by"] == "user:root"


def test_unbind_lets_the_next_sign_in_bind_afresh(client: TestClient) -> None:
    sign_in_ann("okta-1")
    access().grant(ANN, "approver", "tenant:acme", who=root())
    sid, _ = tokens().open_session(ANN, ttl=timedelta(hours=1))
    with pytest.raises(AuthenticationError, match="bound to another account"):
        sign_in_ann("entra-9")  # the new provider's account is refused until the admin releases the old one
    admin = bearer("admin")
    resp = client.post("/api/v1/users/unbind", json={"principal": ANN, "reason": "moved to Entra"}, headers=admin)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["action"], out["issuer"], out["subject"], out["sessions_ended"]) == ("unbound", ISSUER, "okta-1", 1)
    client.cookies.set(SESSION_COOKIE, sid)
    assert client.get("/api/v1/me").status_code == 401  # the old account's session ended
    client.cookies.clear()
    [event] = system("principal.unbound")
    assert (event.data["principal"], event.data["subject"], event.data["reason"]) == (ANN, "okta-1", "moved to Entra")
    # A second unbind has nothing to release.
    again = client.post("/api/v1/users/unbind", json={"principal": ANN, "reason": "x"}, headers=admin)
    assert again.status_code == 400 and "not bound" in again.text
    assert sign_in_ann("entra-9") == ANN  # binds afresh, keeps her roles
    assert [g.role for g in access().grants(ANN)] == ["approver"]
    with pytest.raises(AuthenticationError, match="bound to another account"):
        sign_in_ann("okta-1")
    # A mailbox given to someone else: released with its roles, which the newcomer does not inherit.
    out = client.post("/api/v1/users/unbind", json={"principal": ANN, "reason": "mailbox reassigned",
                                                    "remove_grants": True}, headers=admin).json()  # fmt: skip
    assert out["grants_removed"] == [{"role": "approver", "scope": "tenant:acme"}]
    assert access().grants(ANN) == [] and inbox().roles_of(ANN) == set()
    assert sign_in_ann("newcomer-2") == ANN and access().grants(ANN) == []
    svc = client.post("/api/v1/users/unbind", json={"principal": "service:x", "reason": "x"}, headers=admin)
    assert svc.status_code in (400, 404)
    assert client.post("/api/v1/users/unbind", json={"principal": ANN, "reason": "x"},
                       headers=bearer("operator")).status_code == 403  # fmt: skip


def test_the_panel_session_needs_csrf_to_disable(client: TestClient) -> None:
    sign_in_ann()
    sid, csrf = tokens().open_session("user:root", ttl=timedelta(hours=1))
    client.cookies.set(SESSION_COOKIE, sid)
    body = {"principal": ANN, "reason": "left"}
    assert client.post("/api/v1/users/disable", json=body).status_code == 403
    resp = client.post("/api/v1/users/disable", json=body, headers={"X-CSRF-Token": csrf})
    assert resp.status_code == 200
    assert system("principal.disabled")[-1].data["via"] == "panel"


def test_the_cli_offboards_on_the_local_store(configured: str, tmp_path: Any) -> None:
    """``wflo users`` without a server: the local admin (``WFLO_PRINCIPAL``), one-line errors."""
    from click.testing import CliRunner

    from wflo.cli import cli

    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    sign_in_ann()
    tokens().create("etl-bot", "viewer", who=root())
    acc.grant(ANN, "admin", "tenant:acme", who=root())
    tokens().create("ann-bot", "viewer", "tenant:acme", who=acc.of(ANN, "panel"))
    env = {"WFLO_DATABASE_URL": configured, "WFLO_PRINCIPAL": "user:root", "WFLO_CREDENTIALS": str(tmp_path / "c")}

    def run(*args: str) -> Any:
        _config.reset()
        return CliRunner().invoke(cli, list(args), env=env)

    out = run("users", "disable", ANN, "--reason", "left")
    assert out.exit_code == 0, out.output
    assert f"{ANN} disabled; 0 session(s) ended, 0 token(s) revoked (recorded)" in out.stdout
    assert "service:ann-bot" in out.stdout and "service:etl-bot" not in out.stdout
    for args, words in [
        (("users", "disable", ANN, "--reason", "again"), "disabled already"),
        (("users", "disable", "user:root", "--reason", "x"), "may not disable yourself"),
        (("users", "enable", "user:nobody"), "no principal 'user:nobody' is known here"),
        (("users", "unbind", "service:etl-bot", "--reason", "x"), "only a person (user:…) is bound"),
    ]:
        bad = run(*args)
        assert bad.exit_code != 0 and words in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    listed = run("users", "list")
    assert listed.exit_code == 0 and "disabled" in listed.stdout and "left" in listed.stdout
    assert run("users", "enable", ANN).exit_code == 0
    assert [e.data["via"] for e in system("principal.enabled")] == ["local"]


def test_the_migration_runs_again_over_a_store_that_has_its_columns(configured: str) -> None:
    """A store set back one schema version (as the upgrade tests do) re-runs m028: the
    columns it adds are there already, and the disable they record still works."""
    from wflo.store import MIGRATIONS

    store = _config.get_store()
    index = [m.name for m in MIGRATIONS].index("m028_identity_disabled")
    access().bootstrap("user:root", who=root())
    sign_in_ann()
    store.write(lambda cur: store.execute(cur, f"UPDATE wflo_meta SET value = '{index}' WHERE key = 'schema_version'"))
    assert store.migrate()[:1] == ["m028_identity_disabled"]
    Identities(access()).disable(ANN, reason="left", who=root())
    row = store.read("SELECT disabled, disabled_by, disabled_reason FROM identities WHERE id = ?", (ANN,))
    assert row[0][0] and row[0][1] == "user:root" and row[0][2] == "left"
