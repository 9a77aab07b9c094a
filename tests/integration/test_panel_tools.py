"""The tools API and the /tools page: the catalog with manifests, grants made through the API as
the signed-in person (on the system chain with `via`), refused without `tools:write`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from panel import chromium, grant, serve, signed_in
from wflo import _config
from wflo.auth import access, tokens


@pytest.fixture
def base(sqlite_url: str) -> Iterator[str]:
    cfg = _config.configure(database=sqlite_url, cookie_secure=False)
    access().bootstrap("user:root", who=access().local("user:root"))
    with serve(cfg) as url:
        yield url


def _token(role: str, scope: str = "*") -> dict[str, str]:
    _, secret = tokens().create(f"t-{role}", role, scope, who=access().local("user:root"))
    return {"Authorization": f"Bearer {secret}"}


def test_api_catalog_manifest_and_grants(base: str) -> None:
    viewer, admin = _token("viewer"), _token("admin")
    tools = httpx.get(base + "/api/v1/tools", headers=viewer).json()
    assert {t["name"] for t in tools} >= {"sql_query", "http_get", "write_file"}
    one = httpx.get(base + "/api/v1/tools/write_file", headers=viewer).json()
    assert one["effects"]["destructive"] is True and one["enforcement"] == "in-process"
    assert httpx.get(base + "/api/v1/tools/nope", headers=viewer).status_code == 404
    body = {"tool": "sql_query", "to": "workflow:report", "max_calls": 3}
    assert httpx.post(base + "/api/v1/tools/grants", json=body, headers=viewer).status_code == 403
    made = httpx.post(base + "/api/v1/tools/grants", json=body, headers=admin)
    assert made.status_code == 201, made.text
    bad = httpx.post(base + "/api/v1/tools/grants", json={"tool": "sql_query", "to": "nobody"}, headers=admin)
    assert bad.status_code == 400 and "workflow:NAME" in bad.text
    listed = httpx.get(base + "/api/v1/tools/grants", headers=viewer).json()
    assert [(g["tool"], g["principal"], g["max_calls"]) for g in listed] == [("sql_query", "workflow:report", 3)]
    event = [e for e in _config.get_store().events("system") if e.type == "tool.granted"][-1]
    assert event.data["via"] == "api" and event.data["by"]
    gone = httpx.post(base + "/api/v1/tools/grants/remove", json={"tool": "sql_query", "to": "workflow:report"},
                      headers=admin)  # fmt: skip
    assert gone.json() == {"removed": True}


def test_tools_page_lists_tools_and_grants_one(base: str) -> None:
    with chromium() as browser:
        grant("user:ops@acme.com", "admin")
        ctx: Any = signed_in(browser, base, "user:ops@acme.com")
        page = ctx.new_page()
        page.goto(base + "/tools")
        page.locator("#tools-table").wait_for()
        assert "sql_query" in page.locator("#tools-table").inner_text()
        form = page.locator("#grant-form")
        form.locator("input[name=tool]").fill("http_get")
        form.locator("input[name=to]").fill("workflow:research")
        form.locator("input[name=max_calls]").fill("5")
        form.locator("button[type=submit]").click()
        page.locator("#grants-table").wait_for()
        assert "workflow:research" in page.locator("#grants-table").inner_text()
        event = [e for e in _config.get_store().events("system") if e.type == "tool.granted"][-1]
        assert event.data["by"] == "user:ops@acme.com" and event.data["via"] == "panel"
        page.locator("#grants-table button").click()
        page.get_by_text("No tool grants yet.").wait_for()
        assert ctx.errors == []
