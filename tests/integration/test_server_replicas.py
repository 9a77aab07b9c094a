"""Several server processes on one store, no sticky routing (issue 17): a single sign-on that
starts on one replica finishes on another (a real OIDC provider on localhost, a second replica
in its own process), its callback is good once across replicas, and the rate limits count the
failures of every replica together. Both stores."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from fastapi.testclient import TestClient

from panel import free_port, serve
from wflo import _config
from wflo.auth import access, tokens
from wflo.server import create_app
from wflo.server._signin import PendingLogins, RateLimiter
from wflo.store import open_store

with warnings.catch_warnings():  # the provider imports authlib.jose, deprecated upstream
    warnings.simplefilter("ignore")
    from oidc_provider_mock import User, run_server_in_thread

# The address both replicas announce (behind the load balancer, which this test plays).
PUBLIC = "http://wflo.example"
OIDC = {
    "oidc_client_id": "wflo", "oidc_client_secret": "s3cret-client-value", "oidc_role_map": "wflo-admins=admin",
    "oidc_allowed_domains": "acme.com", "cookie_secure": False, "server_url": PUBLIC,
}  # fmt: skip


@pytest.fixture
def provider() -> Iterator[str]:
    users = [User(sub="ann", claims={"email": "ann@acme.com", "email_verified": True, "groups": ["wflo-admins"]})]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with run_server_in_thread(port=free_port(), user_claims=users) as server:
            yield f"http://localhost:{server.server_port}"


@pytest.fixture
def replicas(store_url: str, provider: str) -> Iterator[tuple[str, str]]:
    """Replica A in this process, replica B in a process of its own (``wflo server``)."""
    cfg = _config.configure(database=store_url, oidc_issuer=provider, **OIDC)
    _config.get_store()  # migrated before B starts
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({f"WFLO_{k.upper()}": str(v) for k, v in OIDC.items()})
    env.update({"WFLO_DATABASE_URL": store_url, "WFLO_OIDC_ISSUER": provider, "WFLO_COOKIE_SECURE": "0",
                "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "wflo.cli", "server", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    b = f"http://127.0.0.1:{port}"
    try:
        with serve(cfg) as a:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(b + "/healthz", timeout=2)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                    assert time.monotonic() < deadline, "replica B did not start"
                    time.sleep(0.1)
            yield a, b
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stderr:
            proc.stderr.close()


def _at_provider(authorize: str, sub: str) -> dict[str, str]:
    """Sign in at the provider (its form, posted by hand): the callback's query (code, state)."""
    resp = httpx.post(authorize, data={"sub": sub}, follow_redirects=False)
    location = resp.headers["location"]
    assert location.startswith(PUBLIC + "/auth/callback?"), location
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


def test_sign_in_started_on_one_replica_finishes_on_another_once(replicas: tuple[str, str]) -> None:
    a, b = replicas
    start = httpx.get(a + "/auth/login", params={"next": "/runs"}, follow_redirects=False)
    assert start.status_code == 303
    state_cookie = {"wflo_login_state": start.cookies["wflo_login_state"]}
    query = _at_provider(start.headers["location"], "ann")
    assert query["state"] == state_cookie["wflo_login_state"]

    done = httpx.get(b + "/auth/callback", params=query, cookies=state_cookie, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/runs", done.text
    session = {"wflo_session": done.cookies["wflo_session"]}
    # The session opened on B works on A (sessions were in the store already).
    assert httpx.get(a + "/api/v1/me", cookies=session).json()["principal"] == "user:ann@acme.com"

    # The same callback replayed, on the other replica and on the same one: refused.
    for replica in (a, b):
        again = httpx.get(replica + "/auth/callback", params=query, cookies=state_cookie)
        assert again.status_code == 401 and "unknown or expired sign-in attempt" in again.text
    # Only digests of the state are kept, and a finished sign-in leaves nothing behind.
    st = _config.get_store()
    assert st.read("SELECT COUNT(*) FROM signin_pending")[0][0] == 0
    # A sign-in started on B whose state the browser did not carry is refused on A (login CSRF).
    other = httpx.get(b + "/auth/login", follow_redirects=False)
    foreign = _at_provider(other.headers["location"], "ann")
    digest = st.read("SELECT digest FROM signin_pending")[0][0]
    assert foreign["state"] not in digest and len(digest) == 64
    refused = httpx.get(a + "/auth/callback", params=foreign, cookies=state_cookie)
    assert refused.status_code == 401
    assert httpx.get(a + "/auth/callback", params=foreign).status_code == 401  # no cookie at all


def test_rate_limit_counts_failures_of_every_replica(replicas: tuple[str, str]) -> None:
    a, b = replicas
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    good = {"Authorization": "Bearer " + tokens().create("ops", "viewer", "*", who=acc.local("user:root"))[1]}
    bad = {"Authorization": "Bearer wflo_nope"}
    for i in range(20):  # 20 failures, half on each replica: each alone would still let guesses in
        assert httpx.get((a, b)[i % 2] + "/api/v1/me", headers=bad).status_code == 401
    for replica in (a, b):  # the 21st is refused on either, even with a good token
        assert httpx.get(replica + "/api/v1/me", headers=bad).status_code == 429
        assert httpx.get(replica + "/api/v1/me", headers=good).status_code == 429


@pytest.mark.parametrize("kind", ["sign-in", "first"])
def test_sign_in_attempts_are_limited_across_app_instances(configured: str, kind: str) -> None:
    one, two = TestClient(create_app()), TestClient(create_app())
    for i in range(20):
        client = (one, two)[i % 2]
        if kind == "sign-in":
            assert client.get("/auth/login", follow_redirects=False).status_code == 503  # no provider set
        else:
            assert client.post("/auth/first", data={"code": f"guess{i}"}).status_code == 401
    for client in (one, two):
        if kind == "sign-in":
            assert client.get("/auth/login").status_code == 429
        else:
            assert client.post("/auth/first", data={"code": "guess"}).status_code == 429


def test_a_pending_sign_in_is_taken_once_by_racing_processes(configured: str) -> None:
    """Two "processes" (each its own store connection pool) take the same states at once."""
    stores = [open_store(configured), open_store(configured)]
    try:
        logins = [PendingLogins(s) for s in stores]
        states = [logins[0].add(f"/r{i}")[0] for i in range(20)]
        wins: list[list[str]] = [[], []]
        barrier = threading.Barrier(2)

        def take(n: int) -> None:
            for state in states:
                barrier.wait(5)
                item = logins[n].take(state)
                if item is not None:
                    wins[n].append(item.next)

        threads = [threading.Thread(target=take, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(wins[0] + wins[1]) == sorted(f"/r{i}" for i in range(20))  # each exactly once
        assert not set(wins[0]) & set(wins[1])
    finally:
        for s in stores:
            s.close()


def test_pending_sign_ins_expire_on_the_store_clock_and_are_swept(configured: str) -> None:
    st = _config.get_store()
    logins = PendingLogins(st)
    old, _ = logins.add("/old")
    st.write(lambda cur: st.execute(cur, "UPDATE signin_pending SET expires_at = '2000-01-01T00:00:00.000000Z'"))
    assert logins.take(old) is None  # expired: refused (and gone)
    stale, _ = logins.add("/stale")
    st.write(lambda cur: st.execute(cur, "UPDATE signin_pending SET expires_at = '2000-01-01T00:00:00.000000Z'"))
    fresh, item = logins.add("/fresh")  # a new sign-in sweeps the abandoned ones
    assert st.read("SELECT next_path FROM signin_pending") == [("/fresh",)]
    assert logins.take(stale) is None and logins.take("forged-state") is None
    assert logins.take(fresh) == item


def test_rate_limit_window_slides_and_old_attempts_are_swept(configured: str) -> None:
    st = _config.get_store()
    limiter = RateLimiter(st, limit=3, window=0.5)
    assert [limiter.allow("k") for _ in range(4)] == [True, True, True, False]
    assert limiter.blocked("k") and not limiter.blocked("other")
    time.sleep(0.6)
    assert not limiter.blocked("k") and limiter.allow("k")
    # Rows past the sweep horizon go at the next sweep; recent ones stay.
    st.write(lambda cur: st.execute(cur, "UPDATE signin_attempts SET at = at - 7200 WHERE key = 'k'"))
    limiter.hit("k2")
    limiter._swept = 0.0
    limiter.hit("k2")
    assert st.read("SELECT key, COUNT(*) FROM signin_attempts GROUP BY key") == [("k2", 2)]


def test_concurrent_attempts_cannot_all_slip_under_the_limit(configured: str) -> None:
    stores = [open_store(configured) for _ in range(4)]
    try:
        limiters = [RateLimiter(s, limit=10, window=60.0) for s in stores]
        results: list[bool] = []
        barrier = threading.Barrier(len(limiters))

        def attempt(limiter: RateLimiter) -> None:
            barrier.wait(5)
            for _ in range(8):
                results.append(limiter.allow("addr"))

        threads = [threading.Thread(target=attempt, args=(lim,)) for lim in limiters]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results.count(True) == 10 and len(results) == 32
    finally:
        for s in stores:
            s.close()


def test_cli_device_sign_in_spans_replicas(replicas: tuple[str, str]) -> None:
    """``wflo login``'s request opened on A, approved on B (its own process, which never sees the
    device code yet seals the token for it), collected on A, and not again on B."""
    from datetime import timedelta

    a, b = replicas
    started = httpx.post(a + "/auth/device", data={"client": "wflo CLI"}).json()
    assert started["verification_uri_complete"].startswith(PUBLIC + "/auth/device/verify?code=")
    sid, csrf = tokens().open_session("user:ann@acme.com", ttl=timedelta(hours=1))
    cookies = {"wflo_session": sid, "wflo_csrf": csrf}
    page = httpx.get(b + "/auth/device/verify", params={"code": started["user_code"]}, cookies=cookies)
    assert page.status_code == 200 and started["user_code"] in page.text
    form = {"code": started["user_code"], "decision": "approve", "csrf": csrf}
    assert httpx.post(b + "/auth/device/verify", data=form, cookies=cookies).status_code == 200
    got = httpx.post(a + "/auth/device/token", data={"device_code": started["device_code"]}).json()
    me = httpx.get(b + "/api/v1/me", headers={"Authorization": f"Bearer {got['access_token']}"}).json()
    assert me["principal"] == "user:ann@acme.com"
    again = httpx.post(b + "/auth/device/token", data={"device_code": started["device_code"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
