"""The compliance report, from a scripted run with an approval, a budget refusal and a loop stop."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auditkit import make_run

from demo_scenes import run_demo_scenes
from wflo import _config
from wflo.audit import build_report, generate_key, make_checkpoint, render_html
from wflo.audit._checkpoint import load_private_key
from wflo.audit._report import SECTIONS
from wflo.store import NewEvent, open_store

SINCE = "2000-01-01T00:00:00.000000Z"


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo's budget, loop and approval scenes, run for real (scripted LLM, real SDK)."""
    url = run_demo_scenes(Path(tmp_path_factory.mktemp("report")))
    with open_store(url) as store:
        make_run(store, "xss", workflow="<script>alert('x')</script>")
        store.append_system([NewEvent("budget.set", {"scope": "workflow:<b>", "usd": "1", "by": "user:<i>ann</i>"})])
    yield url
    _config.reset()


@pytest.fixture
def report(scripted: str, tmp_path: Path) -> dict[str, Any]:
    generate_key(tmp_path / "k.pem")
    with open_store(scripted) as store:
        cp = make_checkpoint(store, load_private_key(tmp_path / "k.pem"), by="user:auditor")
        return build_report(store, since=SINCE, checkpoint=cp, by="user:auditor")


def test_sections_hold_the_scripted_run(report: dict[str, Any]) -> None:
    assert [k for k, _ in SECTIONS if k in report] == [k for k, _ in SECTIONS]
    runs = report["runs"]
    assert runs["by_status"]["stopped"] == 1 and runs["by_status"]["succeeded"] >= 3
    assert {w["workflow"] for w in runs["by_workflow"]} >= {"demo.spend", "demo.loop", "demo.refund"}
    (approval,) = report["approvals"]
    assert approval["status"] == "approved" and approval["decided_by"] == "user:demo-finance"
    assert approval["latency_s"] is not None and approval["latency_s"] >= 0
    assert approval["votes"][0]["principal"] == "user:demo-finance"
    (stop,) = report["loop_stops"]
    assert stop["workflow"] == "demo.loop" and stop["detector"] == "max_repeats"
    (refusal,) = report["budget_refusals"]
    assert refusal["scope"] == "run:demo-budget" and refusal["limit"] == "0.003"
    spend = report["spend"]
    assert float(spend["total_usd"]) > 0
    assert spend["by_model"][0]["model"] == "gpt-4o-mini"
    assert {u["scope"] for u in spend["usage"]} >= {"run:demo-budget"}
    changes = {c["type"]: c for c in report["config_changes"]}
    assert changes["principal.granted"]["by"] == "user:demo-agent-owner"
    assert "budget.set" in changes and "audit.checkpointed" in changes
    assert report["sandbox_denials"] == []
    v = report["verification"]
    assert v["ok"] and v["broken"] == [] and v["checkpoint"]["ok"] and v["checkpoint"]["signature_ok"]
    json.dumps(report)  # JSON-ready as is


def test_html_is_self_contained_and_escaped(report: dict[str, Any]) -> None:
    page = render_html(report)
    for _, heading in SECTIONS:
        assert f">{heading}</h2>" in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "user:&lt;i&gt;ann&lt;/i&gt;" in page
    assert not re.search(r"(src|href)\s*=|url\(|@import", page)


def test_window_excludes_other_periods(scripted: str) -> None:
    with open_store(scripted) as store:
        empty = build_report(store, since=SINCE, until="2001-01-01T00:00:00.000000Z")
    assert empty["runs"]["total"] == 0 and empty["approvals"] == [] and empty["loop_stops"] == []
    assert "None in this period." in render_html(empty)


def test_report_on_both_stores(store_url: str) -> None:
    from auditkit import admin

    with open_store(store_url) as store:
        make_run(store, "ok", workflow="wf-a")
        make_run(store, "bad", workflow="wf-b", status="failed", calls=1)
        store.append_system([NewEvent("budget.set", {"scope": "tenant:t1", "usd": "2", "by": "user:ann"})])
        report = build_report(store, since=SINCE)
        assert report["runs"]["by_status"] == {"failed": 1, "succeeded": 1}
        assert [c["by"] for c in report["config_changes"]] == ["user:ann"]
        assert report["verification"]["ok"]
        with admin(store_url) as db:
            db.run("UPDATE events SET type = 'run.tampered' WHERE chain = 'ok' AND seq = 3")
        broken = build_report(store, since=SINCE)["verification"]
        assert not broken["ok"] and broken["broken"][0]["chain"] == "ok" and broken["broken"][0]["seq"] == 3
        assert "BROKEN" in render_html(build_report(store, since=SINCE))


def test_budget_and_approval_sections_are_the_stored_rows(store_url: str) -> None:
    """The report reads limits, usage and approvals through ``wflo.cost`` and ``wflo.approvals``;
    what it shows is still exactly what their tables hold (both stores)."""
    from decimal import Decimal

    from wflo.approvals import Inbox
    from wflo.cost import CostRequest, Ledger

    with open_store(store_url) as store:
        store.create_run(run_id="rep-1", workflow="wf", input={})
        ledger = Ledger(store)
        ledger.set_limit("global", "5", period="day", by="user:ann")
        ledger.set_limit("tenant:acme", "0", by="user:bob")
        ledger.set_limit("run:rep-1", "2.5")
        cost = CostRequest(input_cost=Decimal("0.01"), output_price_per_token=Decimal("0.001"), output_cap=10)
        res = ledger.reserve(run_id="rep-1", scopes=["global", "run:rep-1"], cost=cost, model="m")
        assert res is not None
        ledger.settle(res, Decimal("0.0125"))
        assert ledger.reserve(run_id="rep-1", scopes=["run:rep-1"], cost=cost, model="m") is not None  # held
        inbox = Inbox(store)
        for n, decision in enumerate(("approve", "reject", None)):
            inbox.create(
                approval_id=f"ap-{n}", run_id="rep-1", call_id=str(n), tool="refund", message=f"refund {n}",
                action={"tool": "refund", "kwargs": {"n": n}}, approvers=["user:carol"], quorum=1, requested_by="user:agent",
                timeout_at=None, on_timeout="reject", escalate_to=[],
            )  # fmt: skip
            if decision:
                inbox.decide(f"ap-{n}", decision, principal="user:carol", reason="ok")
        report = build_report(store, since=SINCE)
        limits = store.read("SELECT scope, limit_usd, period, updated_at, updated_by FROM budget_limits ORDER BY scope")
        usage = store.read(
            "SELECT scope, period_start, limit_usd, spent_usd, reserved_usd FROM budget_usage "
            "ORDER BY scope, period_start"
        )
        approvals = store.read("SELECT id, status, decided_by, reason FROM approvals ORDER BY created_at, id")
        votes = store.read("SELECT approval_id, principal, decision FROM approval_votes ORDER BY at")
    spend = report["spend"]
    assert [tuple(x.values()) for x in spend["limits"]] == [tuple(r) for r in limits] and len(limits) == 3
    assert [(u["scope"], u["period_start"] or "", u["limit_usd"], u["spent_usd"], u["reserved_usd"])
            for u in spend["usage"]] == [tuple(r) for r in usage]  # fmt: skip
    percent = {u["scope"]: u["percent"] for u in spend["usage"]}
    assert percent == {"global": 0.2, "run:rep-1": 0.5}  # tenant:acme was never charged: no period row
    assert [(a["id"], a["status"], a["decided_by"], a["reason"]) for a in report["approvals"]] == [
        tuple(r) for r in approvals
    ]
    assert [(a["id"], v["principal"], v["decision"]) for a in report["approvals"] for v in a["votes"]] == [
        tuple(r) for r in votes
    ]
    assert report["approvals"][0]["latency_s"] >= 0 and report["approvals"][2]["latency_s"] is None
