"""The panel against hostile stored text, in Debian's chromium: markup, script end tags,
``javascript:`` URLs, template braces, bidirectional overrides and very long words in every
field a page shows (run ids, workflow and step names, tenants, errors, tool arguments,
approval messages, a signed-in person's name from OIDC claims, worker names; token names are
plain words by rule).
No script runs, the text shows as text, an override is shown and not applied, and no page
grows wider than the window. Then a cross-site form or fetch with the session cookie, and a
store with 10,000 runs, a run with 5,000 events and runs that failed with a megabyte of text."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

import wflo
from panel import chromium, free_port, serve, signed_in
from wflo import _config
from wflo.approvals import inbox
from wflo.auth import ClaimsPolicy, Identities, access, tokens
from wflo.engine import Worker

# Names refuse control characters (the library says so), so names carry the markup and the
# free text (errors, arguments, claims) carries the rest as well.
MARKUP = "<img src=x onerror=\"window.__pwned='img'\">{{7*7}}</script><script>window.__pwned='script'</script>javascript:alert(1)"
WORD = "W" * 400  # one word, no space to break at
RTL = "\u202e"
TEXT = f"{MARKUP} invoice.{RTL}fdp.exe {WORD}"
RUN_ID = "run" + MARKUP
ODD_ID = "q?x#y/../../admin"


@wflo.tool(approval=wflo.Approval(approvers=["role:approver"]))
def pay_out(note: str) -> str:
    return note


@wflo.step(name="step" + MARKUP)
def hostile_step(x: str) -> dict[str, str]:
    return {"echo": x}


@wflo.workflow(name="wf" + MARKUP)
def hostile(x: str) -> None:
    hostile_step(x)
    raise RuntimeError(TEXT)


@wflo.workflow(name="tests.panel_hostile.asks")
def asks(x: str) -> str:
    return pay_out(x)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('panel-hostile')}/wflo.db"


@pytest.fixture(autouse=True)
def _store(url: str) -> None:
    _config.configure(database=url, cookie_secure=False, poll_interval=0.05, principal="user:agent-owner")


@pytest.fixture(scope="module")
def base(url: str) -> Iterator[str]:
    _config.configure(database=url, cookie_secure=False, poll_interval=0.05)
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    with serve(_config.configure(database=url, cookie_secure=False, poll_interval=0.05)) as served:
        yield served


@pytest.fixture(scope="module")
def browser(base: str) -> Iterator[Any]:
    with chromium() as b:
        yield b


def _watched(browser: Any, base: str, principal: str, role: str | None = "admin") -> Any:
    """A signed-in context where any script the page did not ship, or any dialog, leaves a mark."""
    ctx: Any = signed_in(browser, base, principal, role=role)
    ctx.add_init_script(
        "window.__pwned = ''; window.alert = window.confirm = window.prompt = () => { window.__pwned = 'dialog'; };"
    )
    ctx.dialogs = []
    ctx.on("page", lambda page: page.on("dialog", lambda d: (ctx.dialogs.append(d.message), d.dismiss())))
    return ctx


def _seed_hostile() -> tuple[str, str]:
    for rid in (RUN_ID, ODD_ID):
        with pytest.raises(RuntimeError):
            hostile.options(id=rid, tenant="t" + MARKUP[:30]).run(TEXT)
    handle = asks.options(id="asks" + MARKUP[:20]).start(TEXT)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=0.3)
    (req,) = inbox().list(run_id=handle.id)
    claims = {
        "sub": "mallory",
        "iss": "https://idp.example",
        "email": "mallory@acme.com",
        "name": TEXT,
        "groups": [MARKUP],
    }
    person = Identities(access()).login(claims, ClaimsPolicy.parse(), via="panel", remote="127.0.0.1")
    with pytest.raises(wflo.UserError, match="token name"):  # a token's name is a plain word
        tokens().create("tok" + MARKUP[:40], "viewer", who=access().local("user:root"))
    # A worker (its name is the host it reports) holds the lease of a run whose id needs escaping.
    st = _config.get_store()
    st.create_run(run_id=ODD_ID + "-leased", workflow="leased" + MARKUP[:20], input={"note": TEXT})
    assert st.claim_next("host" + MARKUP[:20] + ":1:w", 60.0, ["leased" + MARKUP[:20]]) is not None
    return req.id, person


PAGES = ["/", "/runs", "/approvals?mine=0&status=all", "/costs", "/audit", "/tools", "/workers", "/admin",
         "/runs/" + quote(RUN_ID, safe=""), "/runs/" + quote(ODD_ID, safe="")]  # fmt: skip


def test_hostile_text_shows_as_text_on_every_page(base: str, browser: Any) -> None:
    aid, person = _seed_hostile()
    ctx = _watched(browser, base, "user:root", role="approver")  # and admin, from the start
    page = ctx.new_page()
    page.set_default_timeout(8000)
    shown: dict[str, str] = {}
    for path in PAGES:
        assert page.goto(base + path).status == 200
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(300)  # the page's module has drawn what it fetched
        assert page.evaluate("window.__pwned") == "", path
        assert page.locator("main img, main script, main iframe").count() == 0, path
        # A long word wraps: the page is never wider than the window (the exact action, an
        # error, an id stay in view, not scrolled off to the right).
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), path
        shown[path] = page.locator("main").inner_text()
    assert RUN_ID in shown["/runs"] and "wf" + MARKUP in shown["/runs"]
    assert MARKUP in shown["/runs/" + quote(RUN_ID, safe="")]  # the error, the step's name
    assert MARKUP in shown["/admin"]  # the person's name, from the claims
    assert ODD_ID + "-leased" in shown["/workers"]
    # The override is shown as an escape, never applied, wherever stored text lands.
    assert all(RTL not in text for text in shown.values())
    for path in ("/runs/" + quote(RUN_ID, safe=""), "/admin"):
        assert "invoice.\\u202efdp.exe" in shown[path], path

    # The approver reads the exact action with the override visible, and the edited arguments
    # keep the very character (JSON reads the escape back).
    page.goto(base + f"/approvals?mine=0&status=all&id={aid}")
    action = page.locator("#detail-action")
    action.wait_for()
    assert "invoice.\\\\u202efdp.exe" in action.inner_text() or "invoice.\\u202efdp.exe" in action.inner_text()
    assert RTL not in action.inner_text() and RTL not in page.locator("#detail-message").inner_text()
    page.locator("#edit").click()
    edited = page.evaluate("JSON.parse(document.getElementById('edit-args').value)")
    assert edited == {"note": TEXT}

    # Links built from stored ids stay on the page they name.
    run_link = page.goto(base + "/workers") and page.locator("#worker-list a.run").first
    assert run_link.get_attribute("href") == "/runs/" + quote(ODD_ID + "-leased", safe="")
    run_link.click()
    page.locator("#run-id").wait_for()
    assert page.locator("#run-id").inner_text() == ODD_ID + "-leased"
    assert page.evaluate("window.__pwned") == "" and ctx.dialogs == [] and ctx.errors == []
    ctx.close()

    # The person named by hostile claims, signed in: the header names them as text.
    ctx = _watched(browser, base, person, role="viewer")
    page = ctx.new_page()
    page.goto(base + "/runs")
    page.locator("#runs-table").wait_for()
    assert page.locator("#who").inner_text() == person and page.evaluate("window.__pwned") == ""
    ctx.close()


class _Evil(http.server.BaseHTTPRequestHandler):
    """Another site's page that tries to act with the visitor's wflo session."""

    target = ""
    run_id = ""

    def do_GET(self) -> None:
        t, rid = self.target, quote(self.run_id, safe="")
        body = f"""<!doctype html><html><body>
<form id=f method=post action="{t}/api/v1/runs/{rid}/cancel" target=sink><input name=csrf value=guess></form>
<form id=g method=post action="{t}/api/v1/tokens" enctype="text/plain" target=sink>
<input name='{{"name":"evil","role":"admin","scope":"*","x":"' value='"}}'></form>
<iframe name=sink></iframe>
<script>
window.results = [];
const opts = (body, type) => ({{method: "POST", credentials: "include", headers: {{"Content-Type": type}}, body}});
(async () => {{
  for (const [path, body, type] of [
      ["/api/v1/tokens", JSON.stringify({{name: "evil2", role: "admin"}}), "application/json"],
      ["/api/v1/tokens", JSON.stringify({{name: "evil3", role: "admin"}}), "text/plain"],
      ["/api/v1/runs/{rid}/cancel", "", "text/plain"]]) {{
    try {{ const r = await fetch("{t}" + path, opts(body, type)); results.push(r.status + " " + await r.text()); }}
    catch (e) {{ results.push("blocked " + e); }}
  }}
  document.getElementById("f").submit();
  setTimeout(() => {{ document.getElementById("g").submit(); window.done = true; }}, 300);
}})();
</script></body></html>"""
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("evil_host", ["127.0.0.1", "localhost"], ids=["same-site-other-port", "other-site"])
def test_another_site_cannot_act_with_the_session(base: str, browser: Any, evil_host: str) -> None:
    st = _config.get_store()
    rid = f"target-{evil_host}"
    st.create_run(run_id=rid, workflow="target", input={})
    before = len(tokens().list())
    _Evil.target, _Evil.run_id = base, rid
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Evil)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    ctx = _watched(browser, base, "user:adm@acme.com", role="admin")
    try:
        page = ctx.new_page()
        page.goto(f"http://{evil_host}:{server.server_address[1]}/")
        page.wait_for_function("window.done === true", timeout=10000)
        page.wait_for_timeout(800)  # the second form's answer lands in the frame
        results = page.evaluate("window.results")
        # Readable answers (no-preflight requests reach the server) are refusals; the rest the
        # browser blocked (no CORS on the API). Nothing was done either way.
        assert all(r.startswith(("blocked", "401", "403")) for r in results), results
        assert not st.get_run(rid).cancel_requested
        assert len(tokens().list()) == before
    finally:
        server.shutdown()
        server.server_close()
        ctx.close()


def test_a_big_store_stays_responsive(base: str, browser: Any) -> None:
    st = _config.get_store()
    for i in range(10_000):
        st.create_run(run_id=f"bulk-{i:05d}", workflow=f"bulk{i % 7}", input={"i": i})

    @wflo.step
    def tick(i: int) -> int:
        return i

    @wflo.workflow(name="tests.panel_hostile.long", guards=False)
    def long(n: int) -> str:
        for i in range(n):
            tick(i)
        return "x" * (1 << 20)  # a megabyte of output

    @wflo.workflow(name="tests.panel_hostile.boom", guards=False)
    def boom() -> None:
        raise RuntimeError("E" * (1 << 20))  # a megabyte of error

    long.options(id="long-1").run(5000)
    events = st.get_run("long-1").last_seq
    assert events >= 5000
    for i in range(20):
        with pytest.raises(RuntimeError):
            boom.options(id=f"boom-{i:02d}").run()

    ctx = _watched(browser, base, "user:ops@acme.com", role="operator")
    page = ctx.new_page()
    page.set_default_timeout(30000)
    started = time.monotonic()
    page.goto(base + "/runs")
    expect_rows = page.locator("#runs-body tr")
    expect_rows.nth(49).wait_for()
    assert time.monotonic() - started < 10 and expect_rows.count() == 50  # one page of 50, not 10,000
    page.click("#more")
    expect_rows.nth(99).wait_for()

    # A list page of runs that failed with a megabyte each stays small: the list cuts the
    # message (the run's page has it whole).
    cookies = {c["name"]: c["value"] for c in ctx.cookies()}
    listed = httpx.get(base + "/api/v1/runs?workflow=tests.panel_hostile.boom&limit=50", cookies=cookies)
    assert len(listed.json()["items"]) == 20 and len(listed.content) < 100_000
    page.goto(base + "/runs?workflow=tests.panel_hostile.boom")
    expect_rows.nth(19).wait_for()
    page.goto(base + "/runs/boom-00")
    page.locator("#error").wait_for()
    assert len(page.locator("#error").inner_text()) > 1_000_000

    started = time.monotonic()
    page.goto(base + "/runs/long-1")
    page.locator("#event-count", has_text=f"{events} events").wait_for()
    assert page.locator("#timeline > li").count() == events and time.monotonic() - started < 20
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    page.goto(base + "/runs/" + quote("no-such-run", safe=""))  # a readable message, not a blank page
    assert "no-such-run" in page.locator("#error").inner_text() or "not" in page.locator("#error").inner_text()
    assert ctx.dialogs == []
    ctx.close()
