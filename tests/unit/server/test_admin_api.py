"""The admin and operations API on both stores (issue 17): people and their grants, workers and
queues, and the first-start admin sign-in link."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from panel import free_port
from wflo import _config
from wflo.auth import access, tokens
from wflo.server import create_app
from wflo.server._firstrun import FirstSignIn


@pytest.fixture
def app(configured: str) -> FastAPI:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    return create_app()


def bearer(role: str, scope: str = "*") -> dict[str, str]:
    secret = tokens().create(f"{role}-{scope.replace(':', '-').replace('*', 'all')}", role, scope,
                             who=access().local("user:root"))[1]  # fmt: skip
    return {"Authorization": f"Bearer {secret}"}


def test_users_lists_people_grants_tokens_and_sessions(app: FastAPI) -> None:
    st = _config.get_store()
    st.write(lambda cur: st.execute(
        cur, "INSERT INTO identities (id, kind, email, name, issuer, subject, groups, disabled, created_at, "
        "last_login_at) VALUES ('user:ann@acme.com', 'user', 'ann@acme.com', 'Ann', 'https://idp', 'a1', "
        "'[\"ops\"]', 0, '2026-01-01T00:00:00.000000Z', '2026-01-02T00:00:00.000000Z')",
    ))  # fmt: skip
    access().grant("user:ann@acme.com", "approver", "tenant:acme", who=access().local("user:root"))
    tokens().open_session("user:ann@acme.com", ttl=timedelta(hours=1))
    client = TestClient(app)
    admin = bearer("admin")
    users = {u["id"]: u for u in client.get("/api/v1/users", headers=admin).json()}
    ann = users["user:ann@acme.com"]
    assert (ann["email"], ann["name"], ann["groups"], ann["sessions"]) == ("ann@acme.com", "Ann", ["ops"], 1)
    assert [(g["role"], g["scope"]) for g in ann["grants"]] == [("approver", "tenant:acme")]
    assert users["user:root"]["grants"][0]["role"] == "admin"
    assert users["service:admin-all"]["kind"] == "service" and users["service:admin-all"]["tokens"] == 1
    # An auditor may read who holds what; a viewer and a tenant's auditor may not.
    assert client.get("/api/v1/users", headers=bearer("auditor")).status_code == 200
    assert client.get("/api/v1/users", headers=bearer("viewer")).status_code == 403
    assert client.get("/api/v1/users", headers=bearer("auditor", "tenant:acme")).status_code == 403
    # Sign ann out everywhere through the API: her sessions count drops to zero.
    out = client.post("/api/v1/sessions/revoke", json={"principal": "user:ann@acme.com"}, headers=admin)
    assert out.status_code == 200
    assert {u["id"]: u for u in client.get("/api/v1/users", headers=admin).json()}["user:ann@acme.com"]["sessions"] == 0


def test_workers_and_queue_depth(app: FastAPI) -> None:
    st = _config.get_store()
    for i in range(5):
        st.create_run(run_id=f"q{i}", workflow="etl" if i < 3 else "mail", input={})
    assert st.claim_next("hostA:101:worker-aa", _config.settings().lease_seconds, ["etl"]) is not None
    assert st.claim_next("hostA:101:worker-aa", _config.settings().lease_seconds, ["etl"]) is not None
    assert st.claim_next("hostB:202:worker-bb", _config.settings().lease_seconds, ["mail"]) is not None
    # A worker that died: its lease ran out, so it is not alive and its run is orphaned.
    dead = st.claim_next("hostC:303:worker-cc", _config.settings().lease_seconds, ["mail"])
    assert dead is not None
    st.write(lambda cur: st.execute(
        cur, "UPDATE runs SET lease_expires_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?", (dead.id,)
    ))  # fmt: skip
    client = TestClient(app)
    data = client.get("/api/v1/workers", headers=bearer("viewer")).json()
    by_id = {w["id"]: w for w in data["workers"]}
    assert set(by_id) == {"hostA:101:worker-aa", "hostB:202:worker-bb"}
    a = by_id["hostA:101:worker-aa"]
    assert (a["host"], a["pid"], a["leases"], len(a["runs"])) == ("hostA", "101", 2, 2)
    assert a["last_heartbeat"] < a["lease_expires_at"] and a["last_heartbeat"] <= data["now"]
    assert a["registered"] is False and a["concurrency"] is None  # known from its leases only
    depth = {(q["workflow"], q["status"]): q["count"] for q in data["queues"]}
    assert depth == {("etl", "queued"): 1, ("etl", "running"): 2, ("mail", "running"): 2}
    assert data["orphaned"] == [{"workflow": "mail", "count": 1}]
    # Workers cut across tenants: a tenant's viewer may not see them.
    assert client.get("/api/v1/workers", headers=bearer("viewer", "tenant:acme")).status_code == 403


_IDLE_APP = """
import wflo


@wflo.workflow(name="idle.app")
def app() -> None:
    return None
"""


def _worker_process(url: str, folder: Path, lease_seconds: str) -> subprocess.Popen[str]:
    """``wflo worker`` serving a module with nothing queued: it stays idle."""
    (folder / "idleapp.py").write_text(_IDLE_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_DATABASE_URL=url, WFLO_LEASE_SECONDS=lease_seconds,
               PYTHONPATH=os.pathsep.join([str(folder), *sys.path]))  # fmt: skip
    cmd = [sys.executable, "-m", "wflo.cli", "worker", "-i", "idleapp", "-q", "-c", "3"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _listed(client: TestClient, headers: dict[str, str], want: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The workers by pid, once ``want`` holds of them (within 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        by_pid = {w["pid"]: w for w in client.get("/api/v1/workers", headers=headers).json()["workers"]}
        if want(by_pid):
            return by_pid
        assert time.monotonic() < deadline, by_pid
        time.sleep(0.1)


def test_idle_workers_are_listed_until_they_stop_or_their_row_expires(
    app: FastAPI, configured: str, tmp_path: Path
) -> None:
    client, viewer = TestClient(app), bearer("viewer")
    calm = _worker_process(configured, tmp_path, "30")
    killed = _worker_process(configured, tmp_path, "4")
    try:
        pids = str(calm.pid), str(killed.pid)
        by_pid = _listed(client, viewer, lambda ws: all(p in ws for p in pids))
        w = by_pid[str(calm.pid)]
        assert (w["leases"], w["runs"], w["registered"], w["concurrency"], w["queues"]) == (0, [], True, 3, None)
        assert "idle.app" in w["workflows"] and w["host"] == socket.gethostname()
        assert w["started_at"] <= w["last_heartbeat"] and w["lease_expires_at"] is None
        # A worker that stops says goodbye: its row goes at once.
        calm.send_signal(signal.SIGTERM)
        assert calm.wait(30) == 0
        assert str(calm.pid) not in _listed(client, viewer, lambda ws: True)
        # A worker killed without a goodbye is listed until its row expires (its lease's length).
        killed.kill()
        killed.wait(30)
        assert str(killed.pid) in _listed(client, viewer, lambda ws: True)
        _listed(client, viewer, lambda ws: str(killed.pid) not in ws)
    finally:
        for proc in (calm, killed):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _first(client: TestClient, code: str) -> httpx.Response:
    return client.post("/auth/first", data={"code": code}, follow_redirects=False)


def test_first_signin_link_works_once(configured: str) -> None:
    _config.configure(database=configured, cookie_secure=False)
    st = _config.get_store()
    first = FirstSignIn(access())
    code = first.issue("user:admin")
    assert code is not None
    client = TestClient(create_app())
    # Opening the link spends nothing (a preview bot may open it): it shows the button.
    assert "first-signin" in client.get(f"/auth/first?code={code}").text
    assert _first(client, "wrong").status_code == 401
    ok = _first(client, code)
    assert ok.status_code == 303 and ok.headers["location"] == "/admin"
    assert client.get("/api/v1/me").json()["principal"] == "user:admin"
    assert [(g.role, g.source) for g in access().grants("user:admin")] == [("admin", "bootstrap")]
    again = _first(TestClient(create_app()), code)
    assert again.status_code == 401 and "used already" in again.text
    assert first.issue("user:other") is None  # an admin exists: no more links
    kinds = [(e.type, e.data.get("reason")) for e in st.events("system") if e.type.startswith("auth.")]
    assert ("auth.first_signin_issued", None) in kinds and ("auth.first_signin", None) in kinds
    assert ("auth.failed", "unknown sign-in code") in kinds
    assert ("auth.failed", "this sign-in link was used already") in kinds
    assert st.read("SELECT COUNT(*) FROM signin_codes WHERE digest = ?", (code,))[0][0] == 0  # digests only


def test_first_signin_expired_or_after_an_admin_is_refused(configured: str) -> None:
    st = _config.get_store()
    first = FirstSignIn(access())
    old, late = first.issue("user:admin"), first.issue("user:late")
    assert old and late
    st.write(lambda cur: st.execute(
        cur, "UPDATE signin_codes SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE principal = 'user:admin'"
    ))  # fmt: skip
    client = TestClient(create_app())
    assert "expired" in _first(client, old).text
    # Someone made an admin another way (wflo admin bootstrap): an older link no longer works.
    access().bootstrap("user:root", who=access().local("user:root"))
    refused = _first(client, late)
    assert refused.status_code == 401 and "admin exists" in refused.text
    assert access().grants("user:late") == []
    reasons = [e.data["reason"] for e in st.events("system") if e.type == "auth.failed"]
    assert any("expired" in r for r in reasons) and "an admin exists already" in reasons
    # Guessing is rate-limited per address.
    codes = [_first(client, f"guess{i}").status_code for i in range(25)]
    assert 429 in codes


def test_first_signin_link_expiry_is_judged_on_the_stores_clock(
    configured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica whose clock runs two hours slow accepted a link that had expired."""
    import wflo.server._firstrun as module
    from wflo.store import now_iso

    st = _config.get_store()
    code = FirstSignIn(access()).issue("user:admin")
    assert code
    st.write(lambda cur: st.execute(cur, "UPDATE signin_codes SET expires_at = ?", (st.now(-60),)))
    monkeypatch.setattr(module, "now_iso", lambda offset=0.0: now_iso(offset - 7200), raising=False)
    refused = _first(TestClient(create_app()), code)
    assert refused.status_code == 401 and "expired" in refused.text
    assert access().grants("user:admin") == []


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_wflo_server_prints_a_working_first_signin_link(configured: str) -> None:
    """The real command on an empty store: the printed link signs in as the first admin."""
    port = free_port()
    env = {**os.environ, "WFLO_DATABASE_URL": configured, "WFLO_COOKIE_SECURE": "false", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from wflo.cli import main; main()", "server", "--port", str(port), "--admin", "user:ops"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        link = None
        deadline = time.monotonic() + 30
        lines: list[str] = []
        assert proc.stdout is not None
        while link is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            m = re.search(r"(http://\S+/auth/first\?code=\S+)", line)
            link = m.group(1) if m else None
        assert link, "".join(lines)
        code = link.split("code=", 1)[1]
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/static/wflo.css")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        resp: Any = httpx.post(f"http://127.0.0.1:{port}/auth/first", data={"code": code})
        assert resp.status_code == 303 and resp.headers["location"] == "/admin"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()
    assert [g.role for g in access().grants("user:ops")] == ["admin"]


def test_health_check_needs_no_credentials_and_says_when_the_store_is_away(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(app)
    assert client.get("/healthz").json() == {"status": "ok"}

    def away() -> None:
        raise ConnectionError("database is restarting")

    monkeypatch.setattr(_config.get_store(), "ping", away)  # the fault, injected where the store is reached
    resp = client.get("/healthz")
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
    assert "restarting" not in resp.text  # the cause's type only, never its text (it may hold a DSN)


def test_two_presses_of_the_link_at_once_make_one_admin(configured: str) -> None:
    import functools
    import threading

    first = FirstSignIn(access())
    code = first.issue("user:admin")
    assert code
    barrier = threading.Barrier(4)
    results: list[str] = []

    def press() -> None:
        barrier.wait()
        try:
            results.append(first.redeem(code, remote="10.0.0.1"))
        except Exception as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=functools.partial(press)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["AccessDeniedError"] * 3 + ["user:admin"], results
    granted = [e for e in _config.get_store().events("system") if e.type == "principal.granted"]
    assert len(granted) == 1 and granted[0].data["source"] == "bootstrap"
