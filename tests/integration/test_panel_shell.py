"""The panel's shell in Debian's chromium: sign-in redirect, navigation, no console errors,
no resource from outside the server (issue 17)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from panel import chromium, serve, signed_in
from wflo import _config


@pytest.fixture
def base(sqlite_url: str) -> Iterator[str]:
    with serve(_config.configure(database=sqlite_url, cookie_secure=False)) as url:
        yield url


def test_overview_signed_in_and_signed_out(base: str) -> None:
    with chromium() as browser:
        ctx: Any = signed_in(browser, base, "user:ann@acme.com", role="viewer")
        page = ctx.new_page()
        outside: list[str] = []
        page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(base) else None)
        page.goto(base + "/")
        assert page.locator("#who").inner_text() == "user:ann@acme.com"
        page.locator("#pending-approvals").wait_for()
        assert page.locator("#pending-approvals").inner_text() == "0"
        assert outside == [] and ctx.errors == []
        csp = page.request.get(base + "/").headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        anon = browser.new_context().new_page()
        anon.goto(base + "/")
        assert anon.locator("#status").inner_text() == "not signed in"


def test_static_files_only_by_plain_name(base: str) -> None:
    import httpx

    assert httpx.get(base + "/static/wflo.js").headers["content-type"].startswith("text/javascript")
    for bad in ("/static/..%2f_app.py", "/static/_app.py", "/static/wflo.js.map", "/static/.hidden.js"):
        assert httpx.get(base + bad).status_code == 404, bad
