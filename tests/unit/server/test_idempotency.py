"""``Idempotency-Key`` on every state-changing /api/v1 route, on both stores (issue 17): a retry
is answered from the first answer, a different request with the same key is refused, and of two
racers exactly one runs the request."""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from panel import serve
from wflo import _config
from wflo.auth import access, tokens
from wflo.server import create_app
from wflo.server._idempotency import IdempotencyKeys, fingerprint


@pytest.fixture
def admin_token(configured: str) -> str:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    return tokens().create("ops", "admin", who=acc.local("user:root"))[1]


def _created_tokens(name: str) -> int:
    return sum(1 for t in tokens().list() if t.name == name)


def test_retry_replays_and_a_different_request_is_refused(admin_token: str) -> None:
    client = TestClient(create_app())
    auth = {"Authorization": f"Bearer {admin_token}", "Idempotency-Key": "k-1"}
    body = {"name": "ci", "role": "viewer"}
    first = client.post("/api/v1/tokens", json=body, headers=auth)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = client.post("/api/v1/tokens", json=body, headers=auth)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()  # the same token, shown again to the same caller
    assert _created_tokens("ci") == 1
    # Same key, another body / another path: the client's mistake.
    other = client.post("/api/v1/tokens", json={**body, "name": "ci2"}, headers=auth)
    assert other.status_code == 422 and "different request" in other.json()["detail"]
    assert (
        client.post("/api/v1/grants", json={"principal": "user:x", "role": "viewer"}, headers=auth).status_code == 422
    )
    assert _created_tokens("ci2") == 0
    # Without a key nothing is kept: the same request runs again.
    plain = {"Authorization": f"Bearer {admin_token}"}
    assert client.post("/api/v1/tokens", json=body, headers=plain).status_code == 201
    assert _created_tokens("ci") == 2
    # Keys are per principal: another admin's same key is their own.
    other_admin = tokens().create("ops2", "admin", who=access().local("user:root"))[1]
    mine = client.post("/api/v1/tokens", json={"name": "ci3", "role": "viewer"},
                       headers={"Authorization": f"Bearer {other_admin}", "Idempotency-Key": "k-1"})  # fmt: skip
    assert mine.status_code == 201 and "Idempotent-Replayed" not in mine.headers
    # A refused request keeps its 4xx answer too (the retry cannot turn into something else).
    bad = {**auth, "Idempotency-Key": "k-bad"}
    assert client.post("/api/v1/tokens", json={"name": "x", "role": "wizard"}, headers=bad).status_code == 400
    replay = client.post("/api/v1/tokens", json={"name": "x", "role": "wizard"}, headers=bad)
    assert replay.status_code == 400 and replay.headers["Idempotent-Replayed"] == "true"
    assert client.post("/api/v1/tokens", json=body, headers={**auth, "Idempotency-Key": "x" * 300}).status_code == 400


def test_keys_expire_after_a_day(admin_token: str) -> None:
    client = TestClient(create_app())
    auth = {"Authorization": f"Bearer {admin_token}", "Idempotency-Key": "old"}
    assert client.post("/api/v1/tokens", json={"name": "a", "role": "viewer"}, headers=auth).status_code == 201
    st = _config.get_store()
    st.write(lambda cur: st.execute(cur, "UPDATE idempotency_keys SET expires_at = '2000-01-01T00:00:00.000000Z'"))
    again = client.post("/api/v1/tokens", json={"name": "a", "role": "viewer"}, headers=auth)
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert _created_tokens("a") == 2


def _race(n: int, fn: Callable[[], Any]) -> list[Any]:
    """``fn`` in ``n`` threads released at the same moment; their results (or exceptions)."""
    barrier = threading.Barrier(n)
    out: list[Any] = []

    def go() -> None:
        barrier.wait()
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_racing_claims_one_wins(configured: str) -> None:
    """Many threads claim one key at once: exactly one may run, the others are told to wait."""
    keys = IdempotencyKeys(_config.get_store())
    fp = fingerprint("POST", "/api/v1/x", "", b"{}")
    for round_ in range(5):
        outcomes = _race(6, functools.partial(keys.claim, "user:a", f"race-{round_}", fp))
        assert outcomes.count(None) == 1, outcomes
        assert all(getattr(o, "status_code", None) == 409 for o in outcomes if o is not None), outcomes


def test_racing_requests_over_http_run_once(admin_token: str, configured: str) -> None:
    """Two clients send the same keyed request at once to a real server: one token is made."""
    with serve(_config.configure(database=configured, cookie_secure=False)) as base:
        for _ in range(4):
            name, key = f"r{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
            headers = {"Authorization": f"Bearer {admin_token}", "Idempotency-Key": key}
            send = functools.partial(
                httpx.post, f"{base}/api/v1/tokens", json={"name": name, "role": "viewer"}, headers=headers, timeout=20
            )
            answers = _race(2, send)
            codes = sorted(a.status_code for a in answers)
            assert codes in ([201, 201], [201, 409]), [a.text for a in answers]
            assert _created_tokens(name) == 1
            made = [a.json()["id"] for a in answers if a.status_code == 201]
            assert len(set(made)) == 1  # a replay is the same token, never a second one


def test_server_error_gives_the_key_back(admin_token: str) -> None:
    """A request that failed on the server's side leaves its key free: the retry runs."""
    app: FastAPI = create_app()
    calls: list[int] = []

    @app.state.router.route("POST", "/api/v1/flaky", permission="tokens:write")
    def flaky() -> dict[str, int]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {"calls": len(calls)}

    client = TestClient(app, raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {admin_token}", "Idempotency-Key": "f"}
    assert client.post("/api/v1/flaky", headers=auth).status_code == 500
    assert client.post("/api/v1/flaky", headers=auth).json() == {"calls": 2}
    assert client.post("/api/v1/flaky", headers=auth).headers["Idempotent-Replayed"] == "true"
    assert len(calls) == 2


_CLAIMER = """
import sys
from wflo import _config
from wflo.server._idempotency import IdempotencyKeys, fingerprint
_config.configure(database=sys.argv[1])
keys = IdempotencyKeys(_config.get_store())
keys.store.ping()
fp = fingerprint("POST", "/api/v1/x", "", b"{}")
print("ready", flush=True)
sys.stdin.readline()  # "go": every process is ready, so they claim at the same moment
try:
    print("run" if keys.claim("user:a", "proc-key", fp) is None else "replay")
except Exception as exc:
    print(getattr(exc, "status_code", repr(exc)))
"""


def test_racing_claims_from_processes_one_wins(configured: str) -> None:
    """Two processes claim one key at the same moment: one runs, the other is told 409."""
    import subprocess
    import sys

    cmd = [sys.executable, "-c", _CLAIMER, configured]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs == ["409", "run"], outs


def test_an_answer_too_large_to_keep_is_not_done_twice(admin_token: str) -> None:
    app: FastAPI = create_app()
    calls: list[int] = []

    @app.state.router.route("POST", "/api/v1/big", permission="tokens:write")
    def big() -> dict[str, str]:
        calls.append(1)
        return {"data": "x" * (2 << 20)}

    client = TestClient(app)
    auth = {"Authorization": f"Bearer {admin_token}", "Idempotency-Key": "big"}
    assert len(client.post("/api/v1/big", headers=auth).content) > 2 << 20
    again = client.post("/api/v1/big", headers=auth)
    assert again.status_code == 409 and "too large to keep" in again.json()["error"]["message"]
    assert again.headers["Idempotent-Replayed"] == "true" and len(calls) == 1


def test_a_form_post_from_a_session_is_keyed_too(admin_token: str) -> None:
    """A browser form sends its CSRF token as a field; the key still guards the request."""
    from datetime import timedelta

    app: FastAPI = create_app()
    calls: list[int] = []

    @app.state.router.route("POST", "/api/v1/form-thing", permission="tokens:write")
    def form_thing() -> dict[str, int]:
        calls.append(1)
        return {"calls": len(calls)}

    sid, csrf = tokens().open_session("user:root", ttl=timedelta(hours=1))
    client = TestClient(app, cookies={"wflo_session": sid})
    key = {"Idempotency-Key": "form-1"}
    assert client.post("/api/v1/form-thing", data={"csrf": csrf, "a": "1"}, headers=key).json() == {"calls": 1}
    again = client.post("/api/v1/form-thing", data={"csrf": csrf, "a": "1"}, headers=key)
    assert again.headers["Idempotent-Replayed"] == "true" and len(calls) == 1
    assert client.post("/api/v1/form-thing", data={"csrf": csrf, "a": "2"}, headers=key).status_code == 422
