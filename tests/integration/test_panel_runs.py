"""The runs pages in Debian's chromium: find a run by filter (kept in the URL, saved as a
view), watch a running run's timeline grow without reloading, cancel it from its page, and
cancel a selected run from the list (issue 17). One server for the module."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

import wflo
from panel import chromium, serve, signed_in
from wflo import _config
from wflo.auth import access


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('panel-runs'))}/wflo.db"
    cfg = _config.configure(database=url, cookie_secure=False, poll_interval=0.05)
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    with serve(cfg) as base:
        yield base, url
    _config.reset()


@pytest.fixture
def base(served: tuple[str, str]) -> str:
    # Each test starts with wflo's settings cleared (tests/conftest.py): point them at the
    # module's store again; the server keeps its own handle on the same file.
    _config.configure(database=served[1], cookie_secure=False, poll_interval=0.05)
    return served[0]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def test_find_a_run_by_filter_and_keep_it_as_a_view(base: str, browser: Any) -> None:
    store = _config.get_store()
    for i in range(5):
        store.create_run(run_id=f"hay-{i}", workflow="haystack", input={})
    store.create_run(run_id="needle-1", workflow="needle.finder", input={})
    ctx: Any = signed_in(browser, base, "user:vic@acme.com", role="viewer")
    page = ctx.new_page()
    page.goto(base + "/runs")
    page.locator("#runs-table tr[data-id='needle-1']").wait_for()
    assert page.locator("#runs-body tr").count() >= 6
    assert page.locator("#cancel-selected").count() == 0 and page.locator("#bulk").count() == 0  # a viewer
    page.fill("#f-workflow", "needle.finder")
    page.click("#apply")
    expect(page.locator("#runs-body tr")).to_have_count(1)
    assert page.locator("#runs-body tr").get_attribute("data-id") == "needle-1"
    assert "workflow=needle.finder" in page.url
    page.fill("#view-name", "needles")
    page.click("#save-view")
    page.reload()  # the filter lives in the URL
    expect(page.locator("#runs-body tr")).to_have_count(1)
    assert page.input_value("#f-workflow") == "needle.finder"
    page.click("#clear")
    expect(page.locator("#runs-body tr[data-id='hay-4']")).to_have_count(1)
    page.select_option("#views", "needles")
    expect(page.locator("#runs-body tr")).to_have_count(1)
    page.click("#runs-body a.run-link")
    page.locator("#run-status").wait_for()
    assert page.locator("#run-status").inner_text() == "queued" and page.locator("#cancel").count() == 0
    assert ctx.errors == []
    ctx.close()


def test_watch_a_running_run_then_cancel_it_from_its_page(base: str, browser: Any) -> None:
    gates = [threading.Event() for _ in range(4)]

    @wflo.step
    def work(i: int) -> int:
        return i * i

    @wflo.workflow(name="tests.panel_runs.watched")
    def watched(n: int) -> int:
        total = 0
        for i in range(n):
            total += work(i)
            gates[i].wait(30)  # the test lets the run go on one step at a time
        return total

    ended: list[BaseException | int] = []

    def go() -> None:
        try:
            ended.append(watched.options(id="watched-1").run(4))
        except BaseException as exc:  # the cancellation ends the run here
            ended.append(exc)

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    store = _config.get_store()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(e.type == "call.completed" for e in store.events("watched-1")) < 1:
        time.sleep(0.02)
    ctx: Any = signed_in(browser, base, "user:olga@acme.com", role="operator")
    page = ctx.new_page()
    page.goto(base + "/runs/watched-1")
    page.locator("#timeline li[data-kind='step']").first.wait_for()
    assert page.locator("#run-status").inner_text() == "running"
    page.evaluate("window.notReloaded = true")
    before = page.locator("#timeline li").count()
    released = time.monotonic()
    gates[0].set()  # the second step runs and is journaled by the run's thread
    expect(page.locator("#timeline li[data-kind='step']")).to_have_count(2, timeout=5000)
    assert time.monotonic() - released < 2.0
    assert page.evaluate("window.notReloaded") is True  # it came by the stream, not a reload
    assert page.locator("#timeline li").count() == before + 1
    page.click("#cancel")
    page.locator(".toast").first.wait_for()
    asked = [e.data for e in store.events("system") if e.type == "run.cancel_requested"]
    assert asked[-1] == {"run_id": "watched-1", "by": "user:olga@acme.com", "via": "panel"}
    gates[1].set()  # at the next step boundary the run stops
    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=5000)
    worker.join(10)
    assert ended and isinstance(ended[0], BaseException) and store.get_run("watched-1").status == "cancelled"
    page.locator("#retry").wait_for()  # the run ended: the page now offers a retry
    assert page.locator("#cancel").count() == 0 and page.evaluate("window.notReloaded") is True
    # From the list: select a queued run and cancel it.
    store.create_run(run_id="queued-1", workflow="tests.panel_runs.idle", input={})
    page.goto(base + "/runs?workflow=tests.panel_runs.idle")
    page.locator("#runs-body tr[data-id='queued-1'] input[type=checkbox]").check()
    page.click("#cancel-selected")
    expect(page.locator("#runs-body tr[data-id='queued-1'] .status")).to_have_text("cancelled")
    assert store.get_run("queued-1").status == "cancelled"
    assert ctx.errors == []
    ctx.close()
    for g in gates:
        g.set()
