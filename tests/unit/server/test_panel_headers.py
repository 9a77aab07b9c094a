"""Security headers and cookies the browser reads, without a browser: API answers (a new
token's secret among them) are never cached or sniffed, the script-free pages (sign-in errors,
the CLI token page) forbid script and framing, and the panel's pages keep their own policy."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from wflo import _config
from wflo.auth import access, tokens
from wflo.server import create_app


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    _config.configure(database=sqlite_url)
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def _session(client: TestClient) -> str:
    sid, csrf = tokens().open_session("user:root", ttl=timedelta(hours=1))
    client.cookies.update({"wflo_session": sid, "wflo_csrf": csrf})
    return csrf


def test_api_answers_are_not_cached_nor_sniffed(client: TestClient) -> None:
    csrf = _session(client)
    created = client.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201 and created.json()["token"].startswith("wflo_")  # the secret, shown once
    refused = client.post("/api/v1/tokens", json={"name": "ci2", "role": "viewer"})  # no CSRF token
    assert refused.status_code == 403
    for resp in (created, refused, client.get("/api/v1/runs"), client.get("/api/v1/me")):
        assert resp.headers["cache-control"] == "no-store", resp.request.url
        assert resp.headers["x-content-type-options"] == "nosniff"


def test_pages_without_script_forbid_script_and_framing(client: TestClient) -> None:
    _session(client)
    for path in ("/auth/cli-token", "/auth/login?next=/runs"):  # the second: no sign-on configured
        resp = client.get(path)
        assert resp.headers["content-type"].startswith("text/html")
        csp = resp.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["x-frame-options"] == "DENY" and resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["referrer-policy"] == "no-referrer" and resp.headers["cache-control"] == "no-store"
    page = client.get("/runs")  # a panel page keeps its own policy: its module, nothing inline
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
