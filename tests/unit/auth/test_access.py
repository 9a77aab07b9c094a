"""Grants need admin, the sock-puppet attack fails, require_auth refuses local changes; tokens
and sessions (issue 16). On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

import wflo
from wflo import _config
from wflo._errors import AccessDeniedError, ApprovalForbiddenError, AuthenticationError, UserError
from wflo.approvals import approvals, inbox
from wflo.auth import (
    ClaimsPolicy,
    Credentials,
    Principal,
    access,
    load_credentials,
    save_credentials,
    tokens,
)


def _wflo(url: str, *args: str, principal: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": url, "WFLO_PRINCIPAL": principal, "PYTHONPATH": os.pathsep.join(sys.path),
                **env_extra})  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "wflo.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _system(kind: str) -> list[dict[str, object]]:
    return [e.data for e in _config.get_store().events("system") if e.type == kind]


def _request(requested_by: str, approvers: list[str], quorum: int = 1, run_id: str = "run-1") -> str:
    req, _ = inbox().create(
        approval_id=f"ap-{run_id}", run_id=run_id, call_id="c1", tool="refund", message="refund 900",
        action={"tool": "refund", "kwargs": {"usd": 900}}, approvers=approvers, quorum=quorum,
        requested_by=requested_by, timeout_at=None, on_timeout="reject", escalate_to=[],
    )  # fmt: skip
    return req.id


# ----------------------------------------------------------------- the sock-puppet attack
def test_sock_puppet_attack_fails_at_the_grant_step(configured: str) -> None:
    """Issue 16: a requester grants two puppets the finance role and approves as them."""
    assert _wflo(configured, "admin", "bootstrap", principal="user:ops").returncode == 0
    assert _wflo(configured, "grant", "user:fin1", "finance", principal="user:ops").returncode == 0
    _request("user:mallory", ["role:finance"], quorum=2)
    for puppet in ("user:sock1", "user:sock2"):
        out = _wflo(configured, "grant", puppet, "finance", principal="user:mallory")
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert "may not grants:write" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert access().grants("user:sock1") == [] and inbox().roles_of("user:sock2") == set()
    refused = _system("access.refused")
    assert [r["by"] for r in refused] == ["user:mallory", "user:mallory"]
    assert all(r["via"] == "local" and r["os_user"] and r["permission"] == "grants:write" for r in refused)
    # ... so the puppets cannot vote.
    with pytest.raises(ApprovalForbiddenError, match="not one of the approvers"):
        approvals.approve("ap-run-1", principal="user:sock1")


def test_a_role_the_requester_granted_does_not_count_for_an_authenticated_decider(configured: str) -> None:
    """Even an admin who requested cannot get it approved through a puppet they granted."""
    _config.configure(database=configured, principal="user:mallory")
    approvals.grant("user:sock1", "finance")  # first-run rule: mallory is the admin
    approvals.grant("user:fin1", "finance")
    acc = access()
    acc.grant("user:fin2", "finance", who=acc.local("user:mallory"))
    acc.grant("user:boss", "admin", who=acc.local("user:mallory"))
    acc.grant("user:fin2", "finance", who=acc.local("user:boss"))  # re-granted by someone else: counts
    rid = _request("user:mallory", ["role:finance"])
    with pytest.raises(ApprovalForbiddenError, match="granted by the requester"):
        inbox().decide(rid, "approve", principal="user:sock1", via="api", authenticated=True)
    done = inbox().decide(rid, "approve", principal="user:fin2", via="api", authenticated=True)
    assert done.status == "approved"


def test_first_run_rule_and_bootstrap(configured: str) -> None:
    _config.configure(database=configured, principal="user:first")
    assert not access().has_admin()
    approvals.grant("user:bo", "finance")  # the first local grant makes its granter the admin
    granted = _system("principal.granted")
    assert [(g["principal"], g["role"], g["source"]) for g in granted] == [
        ("user:first", "admin", "bootstrap"),
        ("user:bo", "finance", "manual"),
    ]
    assert granted[0]["admin"] is True and granted[0]["via"] == "local"
    with pytest.raises(AccessDeniedError, match="an admin exists already"):
        access().bootstrap("user:other", who=access().local("user:other"))
    out = _wflo(configured, "admin", "bootstrap", principal="user:other")
    assert out.returncode != 0 and "admin exists already" in out.stderr
    # A non-admin cannot grant, even a custom role, and the store's admin can.
    _config.configure(database=configured, principal="user:bo")
    with pytest.raises(AccessDeniedError):
        approvals.grant("user:bo", "admin")
    _config.configure(database=configured, principal="user:first")
    assert "approver" in approvals.grant("user:bo", "approver")


def test_concurrent_bootstraps_make_one_admin(configured: str) -> None:
    outs: list[int] = []
    threads = [
        threading.Thread(
            target=lambda p=p: outs.append(_wflo(configured, "admin", "bootstrap", principal=p).returncode)
        )
        for p in ("user:a", "user:b", "user:c")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outs)[0] == 0 and outs.count(0) == 1
    assert len([g for g in access().grants() if g.role == "admin"]) == 1


def test_scoped_admin_grants_only_in_its_tenant(configured: str) -> None:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    acc.grant("user:acme-admin", "admin", "tenant:acme", who=acc.local("user:root"))
    tenant_admin = acc.local("user:acme-admin")
    acc.grant("user:op", "operator", "tenant:acme/project:etl", who=tenant_admin)
    for scope in ("*", "tenant:globex", "tenant:acmex"):
        with pytest.raises(AccessDeniedError):
            acc.grant("user:op", "operator", scope, who=tenant_admin)
    op = acc.local("user:op")
    assert op.allowed("runs:cancel", "tenant:acme/project:etl")
    assert not op.allowed("runs:cancel", "tenant:acme") and not op.allowed("runs:read", "*")
    with pytest.raises(UserError, match="scope must be"):
        acc.grant("user:op", "operator", "tenant:*", who=acc.local("user:root"))
    assert acc.revoke("user:op", "operator", "tenant:acme/project:etl", who=tenant_admin)
    assert _system("principal.revoked")[0]["by"] == "user:acme-admin"


# ----------------------------------------------------------------- require_auth
def test_require_auth_refuses_local_grants_decisions_and_budget_changes(
    configured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    rid = _request("user:req", ["user:root"])
    monkeypatch.setenv("WFLO_REQUIRE_AUTH", "1")
    _config.configure(database=configured, principal="user:root")
    with pytest.raises(AccessDeniedError, match="require_auth"):
        approvals.grant("user:x", "finance")
    with pytest.raises(AccessDeniedError, match="require_auth"):  # the lower layer refuses too
        inbox().grant("user:x", "finance", by="user:root")
    with pytest.raises(AccessDeniedError, match="require_auth"):
        tokens().create("ci", "viewer", who=access().local("user:root"))
    with pytest.raises(ApprovalForbiddenError, match="require_auth"):
        approvals.approve(rid)
    with pytest.raises(AccessDeniedError, match="require_auth"):
        wflo.budgets.set("tenant:acme", usd="5")
    for args in (["grant", "user:x", "finance"], ["approve", rid], ["budgets", "set", "global", "--usd", "1"],
                 ["tokens", "create", "--name", "ci", "--role", "viewer"]):  # fmt: skip
        out = _wflo(configured, *args, principal="user:root", WFLO_REQUIRE_AUTH="1")
        assert out.returncode != 0 and "require_auth" in out.stderr and "Traceback" not in out.stderr, args
    assert inbox().get(rid).status == "pending" and access().grants("user:x") == []
    perms = [r["permission"] for r in _system("access.refused")]
    assert perms.count("grants:write") == 3 and perms.count("approvals:decide") == 2
    assert perms.count("budgets:write") == 2 and perms.count("tokens:write") == 2


def test_a_tenant_grant_reaches_its_projects_only() -> None:
    """``tenant:acme`` reached ``tenant:acme/x`` (a prefix match): the scope of a tenant named
    ``acme/x``, another tenant."""
    from wflo.auth import covers, tenant_scope

    assert covers("tenant:acme", "tenant:acme") and covers("tenant:acme", "tenant:acme/project:etl")
    assert covers("*", tenant_scope("acme/x")) and covers("tenant:acme/project:etl", "tenant:acme/project:etl")
    for grant, resource in [("tenant:acme", tenant_scope("acme/x")), ("tenant:acme", "tenant:acme/project:etl/x"),
                            ("tenant:acme", "tenant:acme/project:"), ("tenant:acme", "tenant:acmex"),
                            ("tenant:acme/project:etl", "tenant:acme/project:etl/x"), ("tenant:acme", "*")]:  # fmt: skip
        assert not covers(grant, resource), (grant, resource)
    who = Principal(id="service:ci", via="api", grants=(("admin", "tenant:acme"),))
    assert not who.allowed("runs:read", tenant_scope("acme/x"))


# ----------------------------------------------------------------- tokens
def test_tokens_shown_once_stored_hashed_expire_and_revoke(configured: str) -> None:
    acc = access()
    root = acc.local("user:root")
    acc.bootstrap("user:root", who=root)
    root = acc.local("user:root")
    out = _wflo(configured, "tokens", "create", "--name", "ci", "--role", "operator", "--tenant", "acme",
                "--expires", "30d", principal="user:root")  # fmt: skip
    assert out.returncode == 0, out.stderr
    secret = out.stdout.strip().splitlines()[-1]
    assert secret.startswith("wflo_")
    who = tokens().authenticate(secret)
    assert who.id == "service:ci" and who.grants == (("operator", "tenant:acme"),)
    assert who.allowed("runs:cancel", "tenant:acme") and not who.allowed("runs:cancel", "tenant:globex")
    # The secret is nowhere in the store: not in a table, not on the chain.
    st = _config.get_store()
    dumped = repr(st.read("SELECT * FROM api_tokens")) + repr([e.data for e in st.events("system")])
    assert secret not in dumped and secret.split("_", 2)[2] not in dumped
    listed = _wflo(configured, "tokens", "list", principal="user:root")
    assert "ci" in listed.stdout and secret not in listed.stdout and "active" in listed.stdout
    # Wrong, tampered, expired, revoked: refused, and recorded without the secret.
    for bad in ("nope", secret[:-1] + ("A" if secret[-1] != "A" else "B"), "wflo_00000000_" + "x" * 43):
        with pytest.raises(AuthenticationError):
            tokens().authenticate(bad)
    short, short_secret = tokens().create("short", "viewer", expires="1s", who=root)
    st.write(lambda cur: st.execute(cur, "UPDATE api_tokens SET expires_at = ? WHERE id = ?",
                                    ("2000-01-01T00:00:00.000000Z", short.id)))  # fmt: skip
    with pytest.raises(AuthenticationError, match="expired"):
        tokens().authenticate(short_secret)
    assert _wflo(configured, "tokens", "revoke", "ci", principal="user:root").returncode == 0
    with pytest.raises(AuthenticationError, match="revoked"):
        tokens().authenticate(secret)
    failed = _system("auth.failed")
    assert [f["reason"] for f in failed] == ["unknown token"] * 3 + ["token expired", "token revoked"]
    assert secret not in repr(failed)
    assert [e["name"] for e in _system("token.created")] == ["ci", "short"]
    assert _system("token.revoked")[0]["by"] == "user:root"
    # Only an admin creates tokens.
    with pytest.raises(AccessDeniedError):
        tokens().create("evil", "admin", who=acc.local("user:nobody"))


def test_sessions_expire_and_are_revoked_server_side(configured: str) -> None:
    t = tokens()
    sid, csrf = t.open_session("user:a", ttl=timedelta(hours=1))
    s = t.session(sid)
    assert s.principal == "user:a" and t.csrf_ok(s, csrf) and not t.csrf_ok(s, csrf + "x") and not t.csrf_ok(s, None)
    t.end_session(sid)
    with pytest.raises(AuthenticationError, match="revoked"):
        t.session(sid)
    sid2, _ = t.open_session("user:a", ttl=timedelta(microseconds=1))
    with pytest.raises(AuthenticationError, match="expired"):
        t.session(sid2)
    with pytest.raises(AuthenticationError):
        t.session("forged")


def test_token_and_session_expiry_is_judged_on_the_stores_clock(
    configured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server replica whose clock runs two hours slow accepted a token and a session that had
    expired by the store's clock; one running fast handed out longer ones."""
    import wflo.auth._tokens as module
    from wflo.store import now_iso

    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    root = acc.local("user:root")
    st = _config.get_store()

    def skew(seconds: float) -> None:  # this process's clock, as the tokens module reads it
        monkeypatch.setattr(module, "now_iso", lambda offset=0.0: now_iso(offset + seconds))
        from datetime import UTC, datetime

        monkeypatch.setattr(module, "_now", lambda: datetime.now(UTC) + timedelta(seconds=seconds), raising=False)

    skew(7200)  # fast: a 1 h token and session still end 1 h from now by the store's clock
    fast, _ = tokens().create("fast", "viewer", expires="1h", who=root)
    fast_sid, _ = tokens().open_session("user:a", ttl=timedelta(hours=1))
    latest = st.now(3600 + 60)
    assert fast.expires_at is not None and fast.expires_at < latest
    assert tokens().session(fast_sid).expires_at < latest

    _, secret = tokens().create("slow", "viewer", expires="1h", who=root)
    sid, _ = tokens().open_session("user:a", ttl=timedelta(hours=1))
    past = st.now(-60)  # expired a minute ago by the store's clock
    st.write(lambda cur: st.execute(cur, "UPDATE api_tokens SET expires_at = ? WHERE name = 'slow'", (past,)))
    st.write(lambda cur: st.execute(cur, "UPDATE sessions SET expires_at = ? WHERE digest = ?",
                                    (past, module.digest(sid))))  # fmt: skip
    skew(-7200)  # slow: by this process's clock both have more than an hour to live
    with pytest.raises(AuthenticationError, match="expired"):
        tokens().authenticate(secret)
    with pytest.raises(AuthenticationError, match="expired"):
        tokens().session(sid)
    assert st.read("SELECT last_used_at FROM api_tokens WHERE name = 'slow'") == [(None,)]


# ----------------------------------------------------------------- claims, credentials
def test_claims_policy_maps_groups_and_restricts_login() -> None:
    policy = ClaimsPolicy.parse(
        "wflo-admins=admin, finance=approver@tenant:acme", allowed_groups="staff", allowed_domains="acme.com"
    )
    claims = {"sub": "1", "email": "Ann@acme.com", "email_verified": True, "groups": ["staff", "finance"]}
    assert policy.refusal(claims) is None
    assert policy.grants(claims) == [("approver", "tenant:acme")]
    assert policy.refusal({**claims, "email": "ann@evil.com"}) == "email domain not allowed"
    assert policy.refusal({**claims, "email_verified": False}) == "email not verified by the provider"
    assert ClaimsPolicy().refusal({**claims, "email_verified": False}) == "email not verified by the provider"
    assert policy.refusal({**claims, "groups": ["finance"]}) == "not in an allowed group"
    # An email the provider does not say it verified (no claim at all) named a principal all the same.
    unsure = {k: v for k, v in claims.items() if k != "email_verified"}
    assert policy.refusal(unsure) == "email not verified by the provider"
    assert policy.refusal({**claims, "email_verified": "true"}) is None  # some providers send text
    assert policy.refusal({**claims, "email_verified": "yes"}) == "email not verified by the provider"
    trusting = ClaimsPolicy.parse(allowed_domains="acme.com", require_email_verified=False)
    assert trusting.refusal(unsure) is None
    assert trusting.refusal({**claims, "email_verified": False}) == "email not verified by the provider"
    assert ClaimsPolicy().refusal({"sub": "1"}) is None  # no email: the principal is user:<sub>
    with pytest.raises(wflo.errors.ConfigurationError):
        ClaimsPolicy.parse("finance=superuser")


def test_credentials_file_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "credentials.json"
    path.parent.mkdir()
    path.write_text("{}")
    path.chmod(0o644)
    save_credentials(Credentials(server="http://x", token="wflo_abc"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credentials(path) == Credentials(server="http://x", token="wflo_abc")


def test_local_principal_is_recorded_with_the_os_user(configured: str) -> None:
    who: Principal = access().local()
    assert who.via == "local" and who.os_user
    out = _wflo(configured, "whoami", "--json", principal="user:me")
    assert '"via": "local"' in out.stdout and '"principal": "user:me"' in out.stdout


def test_login_from_claims_creates_the_user_and_syncs_mapped_roles(configured: str) -> None:
    from wflo.auth import Identities

    policy = ClaimsPolicy.parse("wflo-admins=admin, finance=approver@tenant:acme")
    ids = Identities(access())
    claims = {"iss": "https://idp", "sub": "1", "email": "Ann@acme.com", "groups": ["wflo-admins", "finance"]}
    assert ids.login(claims, policy, via="panel", remote="10.0.0.1") == "user:ann@acme.com"
    assert {(g.role, g.scope, g.source) for g in access().grants("user:ann@acme.com")} == {
        ("admin", "*", "oidc"),
        ("approver", "tenant:acme", "oidc"),
    }
    # Removed from a group at the provider: the role goes at the next login; manual grants stay.
    access().grant("user:ann@acme.com", "finance", who=access().local("user:ann@acme.com"))
    ids.login({**claims, "groups": ["finance"]}, policy, via="panel", remote="10.0.0.1")
    assert {(g.role, g.source) for g in access().grants("user:ann@acme.com")} == {
        ("approver", "oidc"),
        ("finance", "manual"),
    }
    assert [e["remote"] for e in _system("auth.login")] == ["10.0.0.1", "10.0.0.1"]


def test_a_principal_is_bound_to_its_first_provider_account(configured: str) -> None:
    """A recycled address (another subject with the same email) signed in as the old user and
    held their grants."""
    from wflo.auth import Identities

    policy = ClaimsPolicy.parse("finance=approver@tenant:acme")
    ids = Identities(access())
    ann = {"iss": "https://idp", "sub": "1", "email": "ann@acme.com", "email_verified": True, "groups": ["finance"]}
    assert ids.login(ann, policy, via="panel", remote=None) == "user:ann@acme.com"
    access().grant("user:ann@acme.com", "admin", who=access().local("user:root"))
    held = access().grants("user:ann@acme.com")
    for other in ({**ann, "sub": "2", "groups": []}, {**ann, "iss": "https://other-idp"}):
        with pytest.raises(AuthenticationError, match="bound to another account at the provider"):
            ids.login(other, policy, via="panel", remote=None)
    assert access().grants("user:ann@acme.com") == held and len(_system("auth.login")) == 1
    assert ids.login(ann, policy, via="panel", remote=None) == "user:ann@acme.com"  # the owner still can
    # A person granted roles before their first sign-in, or one stored without a subject: bound now.
    st = _config.get_store()
    st.write(lambda cur: st.execute(
        cur, "INSERT INTO identities (id, kind, email, groups, disabled, created_at) VALUES "
        "('user:bo@acme.com', 'user', 'bo@acme.com', '[]', 0, '2026-01-01T00:00:00.000000Z')",
    ))  # fmt: skip
    bo = {"iss": "https://idp", "sub": "b", "email": "bo@acme.com", "email_verified": True}
    assert ids.login(bo, policy, via="panel", remote=None) == "user:bo@acme.com"
    assert st.read("SELECT issuer, subject FROM identities WHERE id = 'user:bo@acme.com'") == [("https://idp", "b")]
    with pytest.raises(AuthenticationError, match="bound to another account"):
        ids.login({**bo, "sub": "b2"}, policy, via="panel", remote=None)


def test_the_client_secret_stays_out_of_the_settings_repr() -> None:
    s = _config.configure(database="sqlite:///x.db", oidc_client_secret="s3cret-value")
    assert s.oidc_client_secret == "s3cret-value" and "s3cret-value" not in repr(s)
