"""A realistic store for the panel's pages, and their screenshots (docs/panel.md).

``python tests/integration/panel_screens.py docs/img`` builds the store (the demo scenes,
two weeks of LLM spend by three workflows of two tenants through the real openai SDK and
wflo.testing's scripted server, budgets, approvals waiting) and writes panel-overview.png,
panel-runs.png, panel-run.png, panel-approvals.png, panel-costs.png and panel-audit.png into the
directory given.

Two weeks of spend are made in a minute by moving the store's clock back while each day's
runs run: every event is still appended through the normal path, hash chain included.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "unit" / "server")]


@contextmanager
def days_ago(n: int) -> Iterator[None]:
    """The store's clock (``now_iso``) reads ``n`` days earlier inside the block."""
    from wflo.store import _records

    real = _records.datetime

    class Earlier(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return real.now(tz) - timedelta(days=n, hours=random.uniform(0, 6))

    _records.datetime = Earlier  # type: ignore[misc]
    try:
        yield
    finally:
        _records.datetime = real  # type: ignore[misc]


def build(directory: Path) -> str:
    """The store: the demo scenes plus two weeks of spend, budgets and waiting approvals."""
    import decisionsapp
    import openai

    import wflo
    from demo_scenes import run_demo_scenes
    from wflo import _config
    from wflo.auth import access
    from wflo.cost._api import ledger
    from wflo.engine import Worker
    from wflo.testing import LLMServer, Reply

    url = run_demo_scenes(directory)
    _config.configure(database=url, poll_interval=0.05)
    acc = access()
    admins = [g.principal for g in acc.grants() if g.role == "admin"]  # the demo made one
    root = acc.local(admins[0]) if admins else acc.local("user:root")
    if not admins:
        acc.bootstrap(root.id, who=root)
        root = acc.local(root.id)
    for person, role in (
        ("user:ann@acme.com", "admin"),
        ("user:ann@acme.com", "finance"),
        ("user:bo@acme.com", "finance"),
    ):
        acc.grant(person, role, "*", who=root)
    rng = random.Random(17)
    budgets = ledger()
    budgets.set_limit("tenant:acme", "3", period="month", by=root.id)
    budgets.set_limit("tenant:globex", "0.10", period="day", by=root.id)  # the two weeks land in today's period
    budgets.set_limit("workflow:summarize", "0.30", period="month", by=root.id)

    with LLMServer() as llm:
        client = openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)

        def ask(model: str, tokens_in: int, tokens_out: int) -> str:
            llm.script(Reply("ok " * 5, input_tokens=tokens_in, output_tokens=tokens_out))
            r = client.chat.completions.create(
                model=model, max_tokens=1500, messages=[{"role": "user", "content": "go " * tokens_in}]
            )
            return r.choices[0].message.content or ""

        @wflo.workflow(name="research")
        def research(topic: str) -> str:
            notes = [
                ask("gpt-4o-mini", rng.randint(800, 3000), rng.randint(200, 900)) for _ in range(rng.randint(2, 5))
            ]
            return ask("gpt-4o", rng.randint(3000, 9000), rng.randint(400, 1500)) + "".join(notes)

        @wflo.workflow(name="triage")
        def triage(ticket: str) -> str:
            return ask("gpt-4.1-mini", rng.randint(500, 2500), rng.randint(50, 300))

        @wflo.workflow(name="summarize")
        def summarize(doc: str) -> str:
            return ask("gpt-4.1", rng.randint(6000, 20000), rng.randint(300, 800))

        for day in range(13, -1, -1):
            with days_ago(day):
                for i in range(rng.randint(1, 3)):
                    research.options(tenant="acme").run(f"topic {day}-{i}")
                for i in range(rng.randint(2, 6)):
                    triage.options(tenant="globex").run(f"ticket {day}-{i}")
                if day % 3 == 0:
                    summarize.options(tenant="acme").run(f"report {day}")
    # Requests waiting for a decision (the requester is the agent's owner).
    import os

    os.environ["WFLO_PRINCIPAL"] = "user:agent-owner"
    _config.configure(database=url, poll_interval=0.05)
    decisionsapp.refunds.options(tenant="acme").start("A-1042", 480.0)
    decisionsapp.refunds.options(tenant="globex").start("G-77", 1250.0)
    decisionsapp.wires.options(tenant="acme").start("DE89 3704 0044", 5000)
    Worker(concurrency=3).run(max_runs=3, idle_timeout=0.5)
    from wflo.audit import generate_key, write_checkpoint

    generate_key(directory / "audit-key.pem")
    write_checkpoint(
        _config.get_store(), directory / "audit-key.pem", directory / "checkpoint.json", by="user:ann@acme.com"
    )
    return url


def screenshots(url: str, out: Path) -> None:
    from panel import chromium, serve, signed_in
    from wflo import _config

    out.mkdir(parents=True, exist_ok=True)
    with serve(_config.configure(database=url, cookie_secure=False)) as base, chromium() as browser:
        ctx: Any = signed_in(browser, base, "user:ann@acme.com")
        page = ctx.new_page()
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(base + "/")
        page.locator("#pending-approvals").wait_for()
        page.screenshot(path=str(out / "panel-overview.png"), full_page=True)
        page.goto(base + "/runs")
        page.locator("#runs-table tbody tr").first.wait_for()
        page.screenshot(path=str(out / "panel-runs.png"))
        rich = _config.get_store().read(
            "SELECT chain FROM events WHERE type = 'call.completed' GROUP BY chain ORDER BY COUNT(*) DESC LIMIT 1"
        )[0][0]
        page.goto(base + f"/runs/{rich}")
        page.locator(".timeline li").first.wait_for()
        page.screenshot(path=str(out / "panel-run.png"))
        page.goto(base + "/approvals")
        page.locator("#approval-table tbody tr").nth(2).click()
        page.locator("#detail-rule", has_text="lambda").wait_for()
        page.screenshot(path=str(out / "panel-approvals.png"), full_page=True)
        page.goto(base + "/costs?since=14d")
        page.locator("#spend-chart").wait_for()
        page.locator("#budget-table").wait_for()
        page.screenshot(path=str(out / "panel-costs.png"), full_page=True)
        page.goto(base + "/audit?verify=1")
        page.locator("#verdict-text").wait_for()
        page.screenshot(path=str(out / "panel-audit.png"), full_page=True)
        assert ctx.errors == [], ctx.errors


if __name__ == "__main__":
    import tempfile

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img")
    work = Path(tempfile.mkdtemp(prefix="wflo-screens-"))
    screenshots(build(work), target)
    print(f"screenshots in {target}; store in {work}")
