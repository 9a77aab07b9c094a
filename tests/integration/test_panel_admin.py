"""The admin and workers pages in Debian's chromium (issue 17): an admin creates a token and
sees its secret once; a viewer sees no write controls and the API refuses them anyway."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from panel import chromium, grant, serve, shot, signed_in
from wflo import _config
from wflo.auth import access, tokens
from wflo.engine import Worker
from wflo.errors import AuthenticationError


@pytest.fixture
def base(sqlite_url: str) -> Iterator[str]:
    with serve(_config.configure(database=sqlite_url, cookie_secure=False)) as url:
        yield url


def test_admin_creates_a_token_and_sees_it_once(base: str) -> None:
    grant("user:bo@acme.com", "approver", "tenant:acme")
    tokens().create("nightly-report", "viewer", "tenant:acme", who=access().local("user:root"))
    with chromium() as browser:
        ctx: Any = signed_in(browser, base, "user:ann@acme.com", role="admin")
        page = ctx.new_page()
        page.goto(base + "/admin")
        page.locator("#people").wait_for()
        assert "user:bo@acme.com" in page.locator("#people").inner_text()
        form = page.locator("#token-form")
        form.locator("input[name=name]").fill("ci-deploy")
        form.locator("select[name=role]").select_option("operator")
        form.locator("button[type=submit]").click()
        secret = page.locator("#token-secret").inner_text()
        assert secret.startswith("wflo_")
        assert "ci-deploy" in page.locator("#tokens").inner_text()
        # The secret works as a bearer token, as the token's own service principal.
        me = page.request.get(base + "/api/v1/me", headers={"Authorization": f"Bearer {secret}"}).json()
        assert me["principal"] == "service:ci-deploy" and me["grants"] == [{"role": "operator", "scope": "*"}]
        made = [e for e in _config.get_store().events("system") if e.type == "token.created"]
        assert made and made[-1].data["via"] == "panel"
        page.set_viewport_size({"width": 1280, "height": 720})
        shot(page, "panel-admin.png")
        # Shown once: after a reload only the prefix is left.
        page.reload()
        page.locator("#tokens").wait_for()
        assert page.locator("#token-secret").count() == 0 and secret not in page.content()
        # Grant a role from the page: it is recorded as granted by ann, via the panel.
        g = page.locator("#grant-form")
        g.locator("input[name=principal]").fill("user:cy@acme.com")
        g.locator("select[name=role]").select_option("auditor")
        g.locator("button[type=submit]").click()
        page.locator("#people >> text=user:cy@acme.com").wait_for()
        held = access().grants("user:cy@acme.com")
        assert [(x.role, x.granted_by, x.via) for x in held] == [("auditor", "user:ann@acme.com", "panel")]
        assert ctx.errors == []


def test_viewer_sees_no_write_controls_and_the_api_refuses(base: str) -> None:
    with chromium() as browser:
        ctx: Any = signed_in(browser, base, "user:vi@acme.com", role="viewer")
        page = ctx.new_page()
        page.goto(base + "/admin")
        page.locator("#not-allowed").wait_for()
        assert page.locator("#token-form, #grant-form, button.danger").count() == 0
        csrf = next(c["value"] for c in ctx.cookies() if c["name"] == "wflo_csrf")
        resp = page.request.post(base + "/api/v1/tokens", data={"name": "x", "role": "admin"},
                                 headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert resp.status == 403
        assert page.request.get(base + "/api/v1/users").status == 403
        # 403s from the page's own reads are expected here, not page errors.
        assert all("403" in e for e in ctx.errors), ctx.errors


def test_workers_page_shows_leases_and_queues(base: str) -> None:
    st = _config.get_store()
    lease = _config.settings().lease_seconds
    for i in range(7):
        st.create_run(run_id=f"run-{i:03d}", workflow=("refunds", "etl", "triage")[i % 3], input={})
    for owner in ("ip-10-0-0-7:4121:worker-3fa2c1", "ip-10-0-0-8:977:worker-b81d0e"):
        assert st.claim_next(owner, lease, ["refunds", "etl"]) is not None
    assert st.claim_next("ip-10-0-0-7:4121:worker-3fa2c1", lease, ["triage"]) is not None
    # A real worker with nothing to do (it serves a workflow nobody started): idle, yet listed.
    idle = Worker(concurrency=2, workflows=["reports"])
    serving = threading.Thread(target=idle.run)
    serving.start()
    try:
        with chromium() as browser:
            ctx: Any = signed_in(browser, base, "user:ops@acme.com", role="operator")
            page = ctx.new_page()
            page.goto(base + "/workers")
            page.locator("#worker-list").wait_for()
            assert page.locator("#alive").inner_text() == "3"
            assert page.locator("#idle").inner_text() == "1"
            assert page.locator("#queued").inner_text() == "4"
            listed = page.locator("#worker-list").inner_text()
            assert "ip-10-0-0-8:977:worker-b81d0e" in listed and idle.owner in listed and "idle" in listed
            shot(page, "panel-workers.png")
            assert ctx.errors == []
    finally:
        idle.stop()
        serving.join(30)


def test_a_tenant_admin_manages_only_their_tenant(base: str) -> None:
    grant("user:bo@acme.com", "approver", "tenant:acme")
    grant("user:gx@globex.com", "viewer", "tenant:globex")
    with chromium() as browser:
        ctx: Any = signed_in(browser, base, "user:ta@acme.com", role="admin", scope="tenant:acme")
        page = ctx.new_page()
        page.goto(base + "/admin")
        page.locator("#people").wait_for()
        people = page.locator("#people").inner_text()
        assert "user:bo@acme.com" in people and "globex" not in people
        form = page.locator("#token-form")
        assert form.locator("input[name=scope]").input_value() == "tenant:acme"
        form.locator("input[name=name]").fill("acme-ci")
        form.locator("button[type=submit]").click()
        assert page.locator("#token-secret").inner_text().startswith("wflo_")
        made = [t for t in tokens().list() if t.name == "acme-ci"]
        assert [(t.role, t.scope, t.created_by) for t in made] == [("viewer", "tenant:acme", "user:ta@acme.com")]
        assert ctx.errors == []


def test_an_admin_disables_and_enables_a_person_from_the_people_table(base: str) -> None:
    grant("user:bo@acme.com", "admin", "tenant:acme")
    bo_sid, _ = tokens().open_session("user:bo@acme.com", ttl=timedelta(hours=1))
    bo = access().of("user:bo@acme.com", "panel")
    _, bo_cli = tokens().create_personal(bo)
    tokens().create("etl-bot", "operator", "tenant:acme", who=bo)
    with chromium() as browser:
        ctx: Any = signed_in(browser, base, "user:ann@acme.com", role="admin")
        page = ctx.new_page()
        asked: list[str] = []

        def answer(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept("left the company (HR-1234)")

        page.on("dialog", answer)
        page.goto(base + "/admin")
        row = page.locator("#people tr[data-id='user:bo@acme.com']")
        row.wait_for()
        # No button to disable yourself.
        assert page.locator("#people tr[data-id='user:ann@acme.com'] button.disable").count() == 0
        row.locator("button.disable").click()
        row.locator(".status.failed", has_text="disabled").wait_for()
        assert "left the company (HR-1234)" in row.inner_text()
        assert asked and "Disable user:bo@acme.com?" in asked[0]
        # The tokens bo made for a service account still work: the page names them.
        note = page.locator("#offboard-note")
        assert "etl-bot" in note.inner_text() and "service:etl-bot" in note.inner_text()
        shot(page, "panel-admin-disabled.png")
        # His session and his personal CLI token are refused at once.
        with pytest.raises(AuthenticationError):
            tokens().session(bo_sid)
        assert page.request.get(base + "/api/v1/me", headers={"Authorization": f"Bearer {bo_cli}"}).status == 401
        [event] = [e for e in _config.get_store().events("system") if e.type == "principal.disabled"]
        assert (event.data["by"], event.data["via"], event.data["reason"]) == (
            "user:ann@acme.com", "panel", "left the company (HR-1234)",
        )  # fmt: skip
        row.locator("button.enable").click()
        row.locator("button.disable").wait_for()
        assert "disabled" not in row.inner_text()
        assert [e.data["by"] for e in _config.get_store().events("system") if e.type == "principal.enabled"] == [
            "user:ann@acme.com"
        ]
        assert ctx.errors == []
