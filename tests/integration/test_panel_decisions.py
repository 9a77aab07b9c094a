"""The approvals, costs and audit pages in Debian's chromium, on one server for the module:
approve an action and see the run resume, a viewer who sees no approve button and gets 403 from
the API, edit a budget, download an export (issue 17)."""

from __future__ import annotations

import io
import json
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from panel import chromium, serve, signed_in
from wflo import _config
from wflo.approvals import inbox
from wflo.cost._api import ledger
from wflo.engine import Worker

sys.path.insert(0, str(Path(__file__).parent.parent / "unit" / "server"))
import decisionsapp


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('panel-decisions')}/wflo.db"


@pytest.fixture(autouse=True)
def _store(url: str) -> Iterator[None]:
    # Each test's settings are reset (tests/conftest.py); the module's server shares the store.
    # The agent's owner asks; user:root (who grants the roles below) must not be the requester.
    _config.configure(database=url, cookie_secure=False, poll_interval=0.05, lease_seconds=5.0,
                      principal="user:agent-owner")  # fmt: skip
    yield


@pytest.fixture(scope="module")
def base(url: str) -> Iterator[str]:
    with serve(_config.configure(database=url, cookie_secure=False, poll_interval=0.05)) as served:
        yield served


@pytest.fixture(scope="module")
def browser(base: str) -> Iterator[Any]:
    with chromium() as b:
        yield b


def _page(ctx: Any) -> Any:
    page = ctx.new_page()
    page.set_default_timeout(8000)
    return page


def _waiting(order: str, amount: float, tenant: str = "acme") -> tuple[Any, str]:
    handle = decisionsapp.refunds.options(tenant=tenant).start(order, amount)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=0.3)
    assert handle.status() == "waiting"
    (req,) = inbox().list(run_id=handle.id)
    return handle, req.id


def test_approve_an_action_and_see_the_run_resume(base: str, browser: Any) -> None:
    handle, aid = _waiting("A-1", 400.0)
    ctx = signed_in(browser, base, "user:fin@acme.com", role="approver")
    from panel import grant

    grant("user:fin@acme.com", "finance")
    worker = Worker(concurrency=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        page = _page(ctx)
        page.goto(base + "/approvals")
        page.locator(f"#approval-table tr[data-id='{aid}']").click()
        assert page.locator("#detail-rule").inner_text() == "lambda amount, **_: amount > 100"
        assert json.loads(page.locator("#detail-action").inner_text())["kwargs"] == {"order_id": "A-1", "amount": 400}
        page.locator("#approve").click()
        page.locator("#run-status", has_text="succeeded").wait_for(timeout=5000)
        assert handle.result(timeout=5) == "refunded 400.0 on A-1"
        req = inbox().get(aid)
        assert (req.status, req.decided_by, req.via) == ("approved", "user:fin@acme.com", "panel")
        assert ctx.errors == []
    finally:
        worker.stop()
        thread.join(10)
        ctx.close()


def test_a_viewer_sees_no_approve_button_and_the_api_refuses(base: str, browser: Any) -> None:
    _, aid = _waiting("A-2", 900.0)
    ctx = signed_in(browser, base, "user:val@acme.com", role="viewer")
    try:
        page = _page(ctx)
        page.goto(base + f"/approvals?mine=0&id={aid}")
        page.locator("#why-not").wait_for()
        assert page.locator("#detail-action").is_visible()
        assert page.locator("#approve").count() == 0 and page.locator("#reject").count() == 0
        assert not page.locator("#f-mine").is_checked()  # a viewer's inbox shows everything, decides nothing
        csrf = next(c["value"] for c in ctx.cookies() if c["name"] == "wflo_csrf")
        digest = inbox().get(aid).action_hash
        resp = page.request.post(
            base + f"/api/v1/approvals/{aid}/decide", data={"decision": "approve"},
            headers={"X-CSRF-Token": csrf, "If-Match": f'"{digest}"'},
        )  # fmt: skip
        assert resp.status == 403
        assert inbox().get(aid).status == "pending"
        refused = [e.data for e in _config.get_store().events("system") if e.type == "access.refused"]
        assert refused[-1]["by"] == "user:val@acme.com" and refused[-1]["via"] == "panel"
        assert ctx.errors == []
    finally:
        ctx.close()


def test_edit_a_budget(base: str, browser: Any) -> None:
    ctx = signed_in(browser, base, "user:bud@acme.com", role="budget-admin")
    try:
        page = _page(ctx)
        page.goto(base + "/costs")
        form = page.locator(".new-budget form")
        form.locator("input[name=scope]").fill("tenant:acme")
        form.locator("input[name=usd]").fill("5")
        form.locator("select[name=period]").select_option("day")
        form.locator("button[type=submit]").click()
        row = page.locator("#budget-table tr[data-id='tenant:acme']")
        row.wait_for()
        assert "$5.00" in row.inner_text()
        row.locator("button.edit-budget").click()
        editor = page.locator("tr.editing form")
        editor.locator("input[name=usd]").fill("7.5")
        editor.locator("button[type=submit]").click()
        page.locator("#budget-table tr[data-id='tenant:acme']", has_text="$7.50").wait_for()
        limit = ledger().get_limit("tenant:acme")
        assert limit is not None and str(limit.limit) == "7.5" and limit.period == "day"
        changes = [e.data for e in _config.get_store().events("system") if e.type == "budget.set"]
        assert [(c["usd"], c["by"], c["via"]) for c in changes[-2:]] == [
            ("5", "user:bud@acme.com", "panel"), ("7.5", "user:bud@acme.com", "panel")
        ]  # fmt: skip
        assert ctx.errors == []
    finally:
        ctx.close()


def test_verify_and_download_an_export(base: str, browser: Any) -> None:
    decisionsapp.refunds.run("A-3", 10.0)
    ctx = signed_in(browser, base, "user:aud@acme.com", role="auditor")
    try:
        page = _page(ctx)
        page.goto(base + "/audit")
        page.locator("#verify-all").click()
        assert page.locator("#verdict-text").inner_text() == "Intact"
        assert "spend book agrees with the journals" in page.locator("#book-verdict").inner_text()
        assert page.locator("#report-link").get_attribute("href") == "/api/v1/audit/report?since=30d"
        with page.expect_download() as info:
            page.locator("#export-btn").click()
        download = info.value
        assert download.suggested_filename.startswith("wflo-export-") and download.suggested_filename.endswith(".zip")
        with zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes())) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            assert manifest["by"] == "user:aud@acme.com" and manifest["events"] > 0
            assert len(zf.read("events.jsonl").splitlines()) == manifest["events"]
        report = page.request.get(base + "/api/v1/audit/report?since=30d")
        assert report.status == 200 and "wflo compliance report" in report.text()
        assert ctx.errors == []
    finally:
        ctx.close()


def test_a_forged_spend_book_row_shows_as_broken(base: str, browser: Any) -> None:
    store = _config.get_store()
    forge = (
        "INSERT INTO ledger_spend (hour, run_id, model, workflow, tenant, calls, cost_usd, estimated_usd, "
        "input_tokens, output_tokens) VALUES ('2026-01-01T03:00', 'ghost-run', 'gpt-4o', 'wf', 'acme', 1, '9.5', "
        "'0', 10, 10)"
    )
    store.write(lambda cur: store.execute(cur, forge, ()))
    ctx = signed_in(browser, base, "user:aud2@acme.com", role="auditor")
    try:
        page = _page(ctx)
        page.goto(base + "/audit")
        page.locator("#verify-all").click()
        assert page.locator("#verdict-text").inner_text() == "BROKEN"
        assert "disagrees" in page.locator("#book-verdict").inner_text()
        assert "ghost-run" in page.locator("#book-table").inner_text()
        assert ctx.errors == []
    finally:
        ctx.close()
        store.write(lambda cur: store.execute(cur, "DELETE FROM ledger_spend WHERE run_id = 'ghost-run'", ()))


def test_a_tenants_viewer_sees_their_tenant(base: str, browser: Any) -> None:
    """Grants in one tenant only: the pages ask for that tenant (never a 403 for every tenant)."""
    ctx = signed_in(browser, base, "user:tv@globex.com", role="viewer", scope="tenant:globex")
    try:
        page = _page(ctx)
        page.goto(base + "/costs")
        page.locator("#budgets h2").wait_for()
        assert page.locator("#f-tenant").input_value() == "globex"
        assert "unavailable" not in page.locator("#costs").inner_text()
        page.goto(base + "/approvals")
        page.locator("#approval-list table, #inbox-empty").first.wait_for()
        assert page.locator("#f-tenant").input_value() == "globex"
        assert ctx.errors == []  # a refused request would show as a console error
    finally:
        ctx.close()
