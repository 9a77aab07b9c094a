"""Single sign-on against a real OIDC provider on localhost (oidc-provider-mock), through a real
browser (Playwright driving Debian's chromium): login, group mapping, logout, expired session,
a refused domain; a tampered ID token and one for another audience are refused (issue 16)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from panel import chromium, free_port, serve
from wflo import _config
from wflo._errors import AuthenticationError
from wflo.server._oidc import Provider

CLIENT_SECRET = "s3cret-client-value"

with warnings.catch_warnings():  # the provider imports authlib.jose, deprecated upstream
    warnings.simplefilter("ignore")
    from oidc_provider_mock import User, run_server_in_thread

ANN = {"email": "ann@acme.com", "email_verified": True, "groups": ["staff", "wflo-admins", "finance"], "name": "Ann"}
USERS = [
    User(sub="ann", claims=ANN),
    User(sub="eve", claims={"email": "eve@evil.example", "email_verified": True, "groups": ["staff"]}),
    # Another account with ann's address (a mailbox given to someone new), and an unverified one.
    User(sub="ann-2", claims={"email": "ann@acme.com", "email_verified": True, "groups": ["staff"]}),
    User(sub="cy", claims={"email": "cy@acme.com", "groups": ["wflo-admins"]}),
]


@pytest.fixture
def provider() -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with run_server_in_thread(port=free_port(), user_claims=USERS) as server:
            yield f"http://localhost:{server.server_port}"


@pytest.fixture
def server(provider: str, sqlite_url: str) -> Iterator[str]:
    yield from _serve(provider, sqlite_url)


def _serve(provider: str, sqlite_url: str) -> Iterator[str]:
    port = free_port()
    base = f"http://localhost:{port}"
    cfg = _config.configure(
        database=sqlite_url, server_url=base, oidc_issuer=provider, oidc_client_id="wflo",
        oidc_client_secret=CLIENT_SECRET, oidc_role_map="wflo-admins=admin, finance=approver@tenant:acme",
        oidc_allowed_domains="acme.com", cookie_secure=False,
    )  # fmt: skip
    with serve(cfg, port):
        yield base


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def _system(kind: str) -> list[dict[str, Any]]:
    return [e.data for e in _config.get_store().events("system") if e.type == kind]


def _sign_in(page: Any, server: str, sub: str) -> None:
    page.goto(server + "/auth/login")
    page.get_by_role("button", name=sub, exact=True).click()  # the provider's sign-in form
    page.wait_for_url(lambda url: url.startswith(server))


def test_browser_login_group_mapping_logout_and_expiry(server: str, browser: Any) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    _sign_in(page, server, "ann")
    assert page.locator("#who").inner_text() == "user:ann@acme.com"
    assert page.locator("#roles").inner_text() == "admin@*, approver@tenant:acme"  # from the groups claim
    cookie = next(c for c in ctx.cookies() if c["name"] == "wflo_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["expires"] > time.time()
    sid = cookie["value"]
    login = _system("auth.login")[0]
    assert login["by"] == "user:ann@acme.com" and login["via"] == "panel" and login["remote"] == "127.0.0.1"
    assert login["roles"] == ["admin@*", "approver@tenant:acme"]
    # The session works for the API, and a state-changing call without the CSRF token does not.
    assert httpx.get(server + "/api/v1/me", cookies={"wflo_session": sid}).json()["via"] == "panel"
    body = {"principal": "user:bo@acme.com", "role": "viewer"}
    assert httpx.post(server + "/api/v1/grants", json=body, cookies={"wflo_session": sid}).status_code == 403

    page.locator("#logout").click()
    page.wait_for_url(server + "/")
    assert page.locator("#status").inner_text() == "not signed in"
    # Signed out server-side: the old cookie value is dead even if someone kept it.
    assert httpx.get(server + "/api/v1/me", cookies={"wflo_session": sid}).status_code == 401
    assert _system("auth.logout")[0]["by"] == "user:ann@acme.com"

    # Expired session: signed in again, then the session passes its expiry.
    _sign_in(page, server, "ann")
    assert page.locator("#who").inner_text() == "user:ann@acme.com"
    st = _config.get_store()
    st.write(lambda cur: st.execute(cur, "UPDATE sessions SET expires_at = '2000-01-01T00:00:00.000000Z'"))
    page.reload()
    assert page.locator("#status").inner_text() == "not signed in"
    assert page.request.get(server + "/api/v1/me").status == 401

    # Nothing secret on the chain or in the database file: no session id, client secret, token.
    sid2 = next(c for c in ctx.cookies() if c["name"] == "wflo_session")["value"]
    chain = json.dumps([e.data for e in st.events("system")])
    db = Path(urlparse(st.url).path).read_bytes()
    for secret in (sid, sid2, CLIENT_SECRET):
        assert secret not in chain and secret.encode() not in db
    assert "eyJ" not in chain  # no JWT (an ID token) anywhere on the chain
    ctx.close()


def test_login_restricted_to_domains(server: str, browser: Any) -> None:
    page = browser.new_page()
    _sign_in(page, server, "eve")
    assert "sign-in refused: email domain not allowed" in page.locator("#error").inner_text()
    assert not any(c["name"] == "wflo_session" for c in page.context.cookies())
    failed = _system("auth.failed")
    assert failed[-1]["email"] == "eve@evil.example" and failed[-1]["reason"] == "email domain not allowed"
    assert _system("auth.login") == []


def _sign_in_http(server: str, sub: str) -> httpx.Response:
    """Sign-in without a browser: our /auth/login, the provider's form posted as ``sub``, our
    callback with the state cookie; returns the callback's answer."""
    with httpx.Client() as client:
        start = client.get(server + "/auth/login", follow_redirects=False)
        back = client.post(start.headers["location"], data={"sub": sub}, follow_redirects=False)
        return client.get(back.headers["location"], follow_redirects=False)


def test_an_unverified_email_or_another_account_with_the_same_email_is_refused(server: str) -> None:
    """The email names the principal: one the provider did not say it verified was accepted, and
    a second account with ann's address signed in as ann, with her grants (admin)."""
    ok = _sign_in_http(server, "ann")
    assert ok.status_code == 303 and "wflo_session" in ok.cookies
    unverified = _sign_in_http(server, "cy")
    assert unverified.status_code == 403 and "email not verified by the provider" in unverified.text
    recycled = _sign_in_http(server, "ann-2")
    assert recycled.status_code == 401 and "bound to another account at the provider" in recycled.text
    assert "wflo_session" not in recycled.cookies
    st = _config.get_store()
    assert st.read("SELECT COUNT(*) FROM sessions")[0][0] == 1
    assert [e["by"] for e in _system("auth.login")] == ["user:ann@acme.com"]
    tried = [(e["email"], e["subject"]) for e in _system("auth.failed")]
    assert tried == [("cy@acme.com", "cy"), ("ann@acme.com", "ann-2")]
    assert _sign_in_http(server, "ann").status_code == 303  # ann herself still signs in


def test_next_is_a_local_path_only(server: str, browser: Any) -> None:
    """No open redirect: after sign-in, ``next`` pointing at another site lands on our home page."""
    page = browser.new_page()
    # A backslash reads as a slash to browsers, a tab is dropped: neither may make "//evil".
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example/", "/%09/evil.example/",
                   "javascript:alert(1)", "/%5Cevil.example/"):  # fmt: skip
        page.goto(server + f"/auth/login?next={target}")
        page.get_by_role("button", name="ann", exact=True).click()
        page.wait_for_url(lambda url: url.startswith(server))
        assert page.url == server + "/" and page.locator("#who").inner_text() == "user:ann@acme.com"


def test_callback_without_the_browser_state_is_refused(server: str) -> None:
    """Login CSRF: a code delivered to a browser that did not start the sign-in is refused."""
    start = httpx.get(server + "/auth/login", follow_redirects=False)
    query = parse_qs(urlparse(start.headers["location"]).query)
    state = query["state"][0]
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43  # PKCE
    assert query["nonce"][0] and query["client_id"] == ["wflo"]
    cookie = start.headers["set-cookie"]
    assert "wflo_login_state=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    resp = httpx.get(server + f"/auth/callback?state={state}&code=x")  # no state cookie
    assert resp.status_code == 401 and "unknown or expired sign-in attempt" in resp.text


# ----------------------------------------------------------------- ID token checks
def _id_token(issuer: str, client_id: str, nonce: str) -> str:
    """A real ID token from the provider for ``client_id`` (its sign-in form posted by hand)."""
    redirect = "http://localhost/cb"
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect, "scope": "openid email",
             "state": "s", "nonce": nonce}  # fmt: skip
    resp = httpx.post(f"{issuer}/oauth2/authorize", params=query, data={"sub": "ann"}, follow_redirects=False)
    code = parse_qs(urlparse(resp.headers["location"]).query)["code"][0]
    token = httpx.post(
        f"{issuer}/oauth2/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect},
        auth=(client_id, "x"),
    )  # fmt: skip
    return str(token.json()["id_token"])


def test_tampered_and_foreign_id_tokens_are_refused(provider: str) -> None:
    ours = Provider(provider, "wflo", "x")
    good = _id_token(provider, "wflo", "n1")
    assert ours.verify(good, "n1")["email"] == "ann@acme.com"
    with pytest.raises(AuthenticationError, match="nonce"):
        ours.verify(good, "another-nonce")
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["email"] = "admin@acme.com"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthenticationError, match="ID token refused"):
        ours.verify(f"{head}.{forged}.{sig}", "n1")
    with pytest.raises(AuthenticationError, match="ID token refused"):
        ours.verify(f"{head}.{payload}.", "n1")  # signature stripped
    foreign = _id_token(provider, "another-app", "n2")
    with pytest.raises(AuthenticationError, match="another audience"):
        ours.verify(foreign, "n2")
    other = Provider(provider, "wflo")
    other.meta()  # discovery done; then the configured issuer differs from the token's
    other.issuer = provider + "/other"
    with pytest.raises(AuthenticationError, match="wrong issuer"):
        other.verify(good, "n1")


def test_cli_login_with_a_token_and_whoami(server: str, tmp_path: Path) -> None:
    import stat
    import subprocess
    import sys

    from wflo.auth import access, tokens

    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    _, secret = tokens().create("ci", "operator", "tenant:acme", expires="1d", who=acc.local("user:root"))
    creds = tmp_path / "creds" / "credentials.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_CREDENTIALS": str(creds), "PYTHONPATH": os.pathsep.join(sys.path)})

    def wflo(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wflo.cli", *args], input=stdin, env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    bad = wflo("login", "--server", server, "--token", "-", stdin="wflo_00000000_" + "x" * 43 + "\n")
    assert bad.returncode != 0 and "refused the credentials" in bad.stderr and not creds.exists()
    ok = wflo("login", "--server", server, "--token", "-", stdin=secret + "\n")
    assert ok.returncode == 0 and "service:ci" in ok.stdout, ok.stderr
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600 and secret not in ok.stdout
    me = json.loads(wflo("whoami", "--json").stdout)
    assert me["principal"] == "service:ci" and me["via"] == "api"
    assert me["grants"] == [{"role": "operator", "scope": "tenant:acme"}]
    assert wflo("logout").returncode == 0 and not creds.exists()


def test_browser_cli_token_then_cli_decides_through_the_server(server: str, browser: Any, tmp_path: Path) -> None:
    """A person signs in, creates a CLI token, and `wflo approve` decides as them (via: api)."""
    import subprocess
    import sys

    from wflo.approvals import inbox

    st = _config.get_store()
    st.create_run(run_id="r-acme", workflow="refunds", input={}, tenant="acme")
    st.create_run(run_id="r-globex", workflow="refunds", input={}, tenant="globex")
    for run in ("r-acme", "r-globex"):
        inbox().create(
            approval_id=f"ap-{run}", run_id=run, call_id="c1", tool="refund", message="refund 900",
            action={"tool": "refund", "kwargs": {"usd": 900}}, approvers=["role:approver"], quorum=1,
            requested_by="user:agent", timeout_at=None, on_timeout="reject", escalate_to=[],
        )  # fmt: skip
    page = browser.new_page()
    _sign_in(page, server, "ann")
    page.goto(server + "/auth/cli-token")
    page.locator("#create").click()
    secret = page.locator("#token").inner_text().strip()
    assert secret.startswith("wflo_")

    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_CREDENTIALS": str(tmp_path / "c.json"), "PYTHONPATH": os.pathsep.join(sys.path)})

    def wflo(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wflo.cli", *args], input=stdin, env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    assert wflo("login", "--server", server, "--token", "-", stdin=secret + "\n").returncode == 0
    ok = wflo("approve", "ap-r-acme", "--reason", "checked")
    assert ok.returncode == 0 and "approved" in ok.stdout, ok.stderr
    done = inbox().get("ap-r-acme")
    assert (done.status, done.decided_by, done.via) == ("approved", "user:ann@acme.com", "api")
    # Grants and tokens from the signed-in CLI go through the server too, as ann.
    assert wflo("grant", "user:bo@acme.com", "viewer", "--scope", "tenant:acme").returncode == 0
    from wflo.auth import access

    g = access().grants("user:bo@acme.com")[0]
    assert (g.granted_by, g.via, g.scope) == ("user:ann@acme.com", "api", "tenant:acme")
    made = wflo("tokens", "create", "--name", "bot", "--role", "viewer", "--tenant", "acme", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["token"].startswith("wflo_")
    assert "bot" in wflo("tokens", "list").stdout
    assert wflo("tokens", "revoke", "bot").returncode == 0
    assert "user:bo@acme.com" in wflo("grants", "list").stdout
    assert wflo("grants", "remove", "user:bo@acme.com", "viewer", "--scope", "tenant:acme").returncode == 0
    assert access().grants("user:bo@acme.com") == []
    # So do budget changes: recorded as ann, via the API.
    budget = wflo("budgets", "set", "tenant:acme", "--usd", "12", "--period", "day")
    assert budget.returncode == 0 and "set on" in budget.stdout, budget.stderr
    changed = _system("budget.set")[-1]
    assert (changed["scope"], changed["usd"], changed["by"], changed["via"]) == (
        "tenant:acme", "12", "user:ann@acme.com", "api")  # fmt: skip
    # ann approves on tenant acme only (finance=approver@tenant:acme); admin@* would allow it,
    # so take the admin role away first: the personal token follows its owner's roles at each use.
    st.write(lambda cur: st.execute(cur, "DELETE FROM role_grants WHERE principal = ? AND role = 'admin'",
                                    ("user:ann@acme.com",)))  # fmt: skip
    refused = wflo("approve", "ap-r-globex")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert inbox().get("ap-r-globex").status == "pending"
    assert _system("access.refused")[-1]["by"] == "user:ann@acme.com"


def test_wflo_server_command_serves_openapi_31(sqlite_url: str) -> None:
    import subprocess
    import sys

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": sqlite_url, "PYTHONPATH": os.pathsep.join(sys.path)})
    proc = subprocess.Popen([sys.executable, "-m", "wflo.cli", "server", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "wflo server did not start"
                time.sleep(0.2)
        spec = resp.json()
        assert spec["openapi"].startswith("3.1") and "/api/v1/approvals/{approval_id}/decide" in spec["paths"]
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/me").status_code == 401
    finally:
        proc.terminate()
        proc.wait(15)


# ----------------------------------------------------------------- a hostile provider, in the browser
class Hostile:
    """WSGI middleware around the real provider that swaps the ID token our server receives:
    ``tamper`` edits its payload (the signature no longer matches); ``audience`` hands over a
    genuine token, with our nonce, issued to another client."""

    def __init__(self, app: Any) -> None:
        self.app, self.mode, self.base, self.foreign = app, "tamper", "", ""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == "/oauth2/authorize" and self.mode == "audience":
            query = parse_qs(environ["QUERY_STRING"])
            if "nonce" in query and query.get("client_id") == ["wflo"]:
                if not self.foreign:
                    self.foreign = _id_token(self.base, "another-app", query["nonce"][0])
                query.pop("nonce")  # the real code then carries none: only the foreign token has ours
                environ["QUERY_STRING"] = "&".join(f"{k}={v[0]}" for k, v in query.items())
        if path != "/oauth2/token" or environ.get("HTTP_AUTHORIZATION", "").find("d2Zsbzp") < 0:
            return self.app(environ, start_response)  # not our server's code exchange ("wflo:" in Basic auth)
        seen: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.update(status=status, headers=headers)
            return lambda data: None

        data = json.loads(b"".join(self.app(environ, capture)))
        if self.mode == "tamper":
            head, payload, sig = data["id_token"].split(".")
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            claims["groups"] = ["wflo-admins"]
            forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
            data["id_token"] = f"{head}.{forged}.{sig}"
        else:
            data["id_token"] = self.foreign
        out = json.dumps(data).encode()
        headers = [(k, v) for k, v in seen["headers"] if k.lower() != "content-length"]
        start_response(seen["status"], [*headers, ("Content-Length", str(len(out)))])
        return [out]


@pytest.fixture
def hostile(sqlite_url: str) -> Iterator[tuple[str, Hostile]]:
    import werkzeug.serving

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from oidc_provider_mock import app as provider_app

        eve = User(sub="eve", claims={"email": "eve@acme.com", "email_verified": True, "groups": []})
        mw = Hostile(provider_app(user_claims=[eve]))
        srv = werkzeug.serving.make_server("localhost", free_port(), mw, threaded=True)
        mw.base = f"http://localhost:{srv.server_port}"
        thread = threading.Thread(target=srv.serve_forever, args=(0.1,), daemon=True)
        thread.start()
        try:
            for base in _serve(mw.base, sqlite_url):
                yield base, mw
        finally:
            srv.shutdown()
            thread.join(10)


@pytest.mark.parametrize(("mode", "why"), [("tamper", "ID token refused: "), ("audience", "another audience")])
def test_browser_sign_in_with_a_tampered_or_foreign_id_token_is_refused(
    hostile: tuple[str, Hostile], browser: Any, mode: str, why: str
) -> None:
    server, mw = hostile
    mw.mode = mode
    page = browser.new_page()
    _sign_in(page, server, "eve")
    assert why in page.locator("#error").inner_text()
    assert not any(c["name"] == "wflo_session" for c in page.context.cookies())
    assert _system("auth.login") == [] and why in _system("auth.failed")[-1]["reason"]
    assert _config.get_store().read("SELECT COUNT(*) FROM sessions")[0][0] == 0


def test_browser_approves_the_cli_device_sign_in(server: str, browser: Any, tmp_path: Path) -> None:
    """`wflo login` polls in a subprocess; the person opens its link in a browser not yet signed
    in, goes through single sign-on and back to the page, checks the code and approves."""
    import subprocess
    import sys

    creds = tmp_path / "creds.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_CREDENTIALS": str(creds), "PYTHONPATH": os.pathsep.join(sys.path)})
    login = subprocess.Popen([sys.executable, "-m", "wflo.cli", "login", "--server", server, "--no-browser"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert login.stdout is not None
        link = ""
        while "/auth/device/verify?code=" not in link:
            link = login.stdout.readline().strip()
            assert link or login.poll() is None, login.stderr.read() if login.stderr else ""
        code = link.rsplit("=", 1)[1]
        page = browser.new_page()
        page.goto(link)  # not signed in: to the provider, and back here after it
        page.get_by_role("button", name="ann", exact=True).click()
        page.wait_for_url(lambda url: url.startswith(server + "/auth/device/verify"))
        assert page.locator("#user-code").inner_text() == code
        assert page.locator("#as").inner_text() == "user:ann@acme.com"
        assert page.locator("#roles").inner_text() == "admin@*, approver@tenant:acme"
        assert page.locator("#client").inner_text().startswith("wflo CLI, ")
        page.locator("#approve").click()
        assert "Approved" in page.locator("#done").inner_text()
        out, err = login.communicate(timeout=60)
    finally:
        if login.poll() is None:
            login.kill()
    assert login.returncode == 0 and "as user:ann@acme.com" in out, err
    token = json.loads(creds.read_text())["token"]
    assert httpx.get(server + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["via"] == "api"
    approved = _system("auth.device_approved")
    assert len(approved) == 1 and approved[0]["by"] == "user:ann@acme.com" and approved[0]["user_code"] == code
    assert token not in json.dumps([e.data for e in _config.get_store().events("system")])


def test_cli_offboards_through_the_server_and_the_provider_sign_in_follows(server: str, tmp_path: Path) -> None:
    """``wflo users`` through a signed-in CLI (a real subprocess): a disabled person's session
    cookie and provider sign-in are refused; unbinding lets another account of her address bind."""
    import subprocess
    import sys

    from wflo.auth import access, tokens

    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    _, secret = tokens().create("ops", "admin", expires="1d", who=acc.local("user:root"))
    creds = tmp_path / "creds" / "credentials.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_CREDENTIALS": str(creds), "PYTHONPATH": os.pathsep.join(sys.path)})

    def wflo(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wflo.cli", *args], input=stdin, env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    signed = _sign_in_http(server, "ann")
    assert signed.status_code == 303
    cookie = signed.cookies["wflo_session"]
    assert httpx.get(server + "/api/v1/me", cookies={"wflo_session": cookie}).status_code == 200
    assert wflo("login", "--server", server, "--token", "-", stdin=secret + "\n").returncode == 0
    missing = wflo("users", "disable", "user:ann@acme.com")
    assert missing.returncode != 0 and "--reason" in missing.stderr
    unknown = wflo("users", "disable", "user:nobody@acme.com", "--reason", "x")
    assert unknown.returncode != 0 and "HTTP 404" in unknown.stderr and "Traceback" not in unknown.stderr
    out = wflo("users", "disable", "user:ann@acme.com", "--reason", "left the company")
    assert out.returncode == 0, out.stderr
    assert "user:ann@acme.com disabled; 1 session(s) ended" in out.stdout
    assert httpx.get(server + "/api/v1/me", cookies={"wflo_session": cookie}).status_code == 401
    refused = _sign_in_http(server, "ann")
    assert refused.status_code == 401 and "disabled" in refused.text and "wflo_session" not in refused.cookies
    assert _system("auth.failed")[-1]["subject"] == "ann"
    listed = json.loads(wflo("users", "list", "--json").stdout)
    ann = next(u for u in listed if u["id"] == "user:ann@acme.com")
    assert ann["disabled"] and ann["disabled_by"] == "service:ops" and ann["bound"]
    # Her mailbox goes to someone else: enabled, released with her roles, the new account binds.
    assert wflo("users", "enable", "user:ann@acme.com", "--reason", "mailbox reassigned").returncode == 0
    assert _sign_in_http(server, "ann-2").status_code == 401  # still bound to the old account
    out = wflo("users", "unbind", "user:ann@acme.com", "--reason", "mailbox reassigned", "--remove-grants")
    assert out.returncode == 0 and "released from" in out.stdout and "roles removed: admin@*" in out.stdout
    assert _sign_in_http(server, "ann-2").status_code == 303
    unbound = _system("principal.unbound")[-1]
    assert (unbound["by"], unbound["subject"], unbound["reason"]) == ("service:ops", "ann", "mailbox reassigned")
    # ann-2's groups map no admin role: she does not inherit ann's.
    assert [(g.role, g.source) for g in access().grants("user:ann@acme.com")] == []
