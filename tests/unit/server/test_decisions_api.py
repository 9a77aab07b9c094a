"""The control plane's decision routes on both stores: the approvals inbox and decide (If-Match
on the action hash, races, wrong roles, wrong tenants), costs and budgets, and the audit record
(issue 17)."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

import wflo
from wflo import _config
from wflo.approvals import inbox
from wflo.auth import access, tokens
from wflo.engine import RunHandle, Worker
from wflo.server import create_app
from wflo.testing import LLMServer, Reply

sys.path.insert(0, str(Path(__file__).parent))
import decisionsapp


class Api:
    """A TestClient speaking as one bearer token."""

    def __init__(self, client: TestClient, secret: str) -> None:
        self.client, self.headers = client, {"Authorization": f"Bearer {secret}"}

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.headers)

    def post(self, path: str, body: Any = None, **headers: str) -> Any:
        return self.client.post(path, json=body, headers={**self.headers, **headers})

    def put(self, path: str, body: Any) -> Any:
        return self.client.put(path, json=body, headers=self.headers)


def _env(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:agent-owner")
    _config.configure(database=url, lease_seconds=5.0, poll_interval=0.05)
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    root = acc.local("user:root")

    def token(name: str, role: str, scope: str = "*", finance: bool = False) -> str:
        if finance:
            acc.grant(f"service:{name}", "finance", scope, who=root)
        # Each made by its own admin: a service account acts for whoever made its token, so
        # two tokens of one maker would be one person's two votes in a quorum.
        acc.grant(f"user:maker-{name}", "admin", who=root)
        return tokens().create(name, role, scope, who=acc.local(f"user:maker-{name}"))[1]

    with TestClient(create_app()) as client:
        yield {
            "fin_a": Api(client, token("fin-a", "approver", finance=True)),
            "fin_b": Api(client, token("fin-b", "approver", finance=True)),
            "fin_acme": Api(client, token("fin-acme", "approver", "tenant:acme", finance=True)),
            "viewer": Api(client, token("viewer", "viewer")),
            "auditor": Api(client, token("auditor", "auditor")),
            "budgets": Api(client, token("budgets", "budget-admin")),
            "client": client,
        }
    _config.reset()


@pytest.fixture
def env(configured: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The server, and tokens: approvers (finance) for acme and everywhere, a viewer, an auditor."""
    yield from _env(configured, monkeypatch)


@pytest.fixture
def sqlite_env(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    yield from _env(sqlite_url, monkeypatch)


def _serve() -> None:
    Worker(concurrency=2).run(max_runs=1, idle_timeout=0.3)


def _waiting(flow: Any, *args: Any, tenant: str = "acme") -> tuple[RunHandle, str]:
    handle = flow.options(tenant=tenant).start(*args)
    _serve()
    assert handle.status() == "waiting"
    (req,) = inbox().list(run_id=handle.id)
    return handle, req.id


def test_inbox_detail_and_decide_wakes_the_run(env: dict[str, Any]) -> None:
    handle, aid = _waiting(decisionsapp.refunds, "o-1", 500.0)
    fin, viewer = env["fin_a"], env["viewer"]
    mine = fin.get("/api/v1/approvals?mine=true").json()
    assert [a["id"] for a in mine] == [aid] and mine[0]["may_decide"] and mine[0]["tenant"] == "acme"
    assert viewer.get("/api/v1/approvals?mine=true").json() == []  # nothing is routed to a viewer
    (seen,) = viewer.get("/api/v1/approvals").json()
    assert seen["id"] == aid and seen["may_decide"] is False
    assert env["fin_acme"].get("/api/v1/approvals?tenant=globex").status_code == 403

    resp = fin.get(f"/api/v1/approvals/{aid}")
    detail = resp.json()
    assert resp.headers["etag"] == f'"{detail["action_hash"]}"'
    assert detail["action"] == {"tool": "refund", "args": [], "kwargs": {"order_id": "o-1", "amount": 500.0}}
    assert detail["rule"]["when"] == "lambda amount, **_: amount > 100"
    assert detail["rule"]["approvers"] == ["role:finance"] and detail["timeout_at"]
    assert detail["requested_by"] == "user:agent-owner" and detail["run_status"] == "waiting"
    assert viewer.get(f"/api/v1/approvals/{aid}").json()["why_not"].startswith("you may not decide")

    assert fin.post(f"/api/v1/approvals/{aid}/decide", {"decision": "approve"}).status_code == 428
    worker = threading.Thread(target=lambda: Worker(concurrency=1).run(max_runs=1, idle_timeout=5.0))
    worker.start()
    time.sleep(0.3)  # the worker is idle, polling
    t0 = time.monotonic()
    done = fin.post(f"/api/v1/approvals/{aid}/decide", {"decision": "approve"}, **{"If-Match": resp.headers["etag"]})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "approved" and done.json()["decided_by"] == "service:fin-a"
    assert handle.result(timeout=5) == "refunded 500.0 on o-1"
    assert time.monotonic() - t0 < 1.0  # the decision shows in the run within a second
    worker.join(10)
    decided = [e.data for e in _config.get_store().events("system") if e.type == "approval.decided"]
    assert decided[-1]["by"] == "service:fin-a" and decided[-1]["via"] == "api"


def test_two_deciders_racing_with_the_same_hash(env: dict[str, Any]) -> None:
    _, aid = _waiting(decisionsapp.refunds, "o-2", 900.0)
    etag = env["fin_a"].get(f"/api/v1/approvals/{aid}").headers["etag"]
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def decide(who: str) -> None:
        barrier.wait()
        body = {"decision": "approve"} if who == "fin_a" else {"decision": "reject", "reason": "too much"}
        codes.append(env[who].post(f"/api/v1/approvals/{aid}/decide", body, **{"If-Match": etag}).status_code)

    threads = [threading.Thread(target=decide, args=(w,)) for w in ("fin_a", "fin_b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(codes) == [200, 409]
    assert len([e for e in _config.get_store().events("system") if e.type == "approval.decided"]) == 1


def test_stale_hash_is_412_and_changes_nothing(env: dict[str, Any]) -> None:
    handle, aid = _waiting(decisionsapp.refunds, "o-3", 300.0)
    fin = env["fin_a"]
    stale = "0" * 64
    edit = {"decision": "edit", "args": {"amount": 150.0}}
    resp = fin.post(f"/api/v1/approvals/{aid}/decide", edit, **{"If-Match": f'"{stale}"'})
    assert resp.status_code == 412 and resp.json()["error"]["code"] == "action_mismatch"
    resp = fin.post(f"/api/v1/approvals/{aid}/decide", {**edit, "action_hash": stale})
    assert resp.status_code == 412
    assert inbox().votes(aid) == [] and inbox().get(aid).status == "pending"
    assert fin.post(f"/api/v1/approvals/{aid}/decide", {"decision": "edit"}, **{"If-Match": stale}).status_code == 400
    # The right hash: the edited action is what is stored and what runs.
    etag = fin.get(f"/api/v1/approvals/{aid}").headers["etag"]
    done = fin.post(f"/api/v1/approvals/{aid}/decide", edit, **{"If-Match": etag}).json()
    assert done["status"] == "approved"
    assert inbox().get(aid).decided_action["kwargs"] == {"order_id": "o-3", "amount": 150.0}
    _serve()
    assert handle.result(timeout=5) == "refunded 150.0 on o-3"


def test_quorum_votes_on_different_actions_conflict(env: dict[str, Any]) -> None:
    """Four eyes: one approver edited the amount, the other approves the original: 409."""
    _, aid = _waiting(decisionsapp.wires, "acct-9", 5000)
    etag = env["fin_a"].get(f"/api/v1/approvals/{aid}").headers["etag"]
    first = env["fin_a"].post(
        f"/api/v1/approvals/{aid}/decide", {"decision": "edit", "args": {"usd": 500}}, **{"If-Match": etag}
    )
    assert first.status_code == 200 and first.json()["status"] == "pending"
    second = env["fin_b"].post(f"/api/v1/approvals/{aid}/decide", {"decision": "approve"}, **{"If-Match": etag})
    assert second.status_code == 409 and second.json()["error"]["code"] == "action_mismatch"
    assert inbox().get(aid).status == "pending"


def test_wrong_role_and_wrong_tenant_are_refused_and_recorded(env: dict[str, Any]) -> None:
    _, aid = _waiting(decisionsapp.refunds, "o-4", 700.0, tenant="globex")
    etag = env["viewer"].get(f"/api/v1/approvals/{aid}").headers["etag"]
    for who in ("viewer", "fin_acme"):
        resp = env[who].post(f"/api/v1/approvals/{aid}/decide", {"decision": "approve"}, **{"If-Match": etag})
        assert resp.status_code == 403, (who, resp.text)
    assert env["fin_acme"].get(f"/api/v1/approvals/{aid}").status_code == 403
    refused = [e.data for e in _config.get_store().events("system") if e.type == "access.refused"]
    assert {(r["by"], r["permission"], r["scope"]) for r in refused} >= {
        ("service:viewer", "approvals:decide", "tenant:globex"),
        ("service:fin-acme", "approvals:decide", "tenant:globex"),
    }
    assert inbox().get(aid).status == "pending" and inbox().votes(aid) == []
    reject = env["fin_a"].post(f"/api/v1/approvals/{aid}/decide", {"decision": "reject"}, **{"If-Match": etag})
    assert reject.status_code == 400  # a rejection needs a reason
    assert "reason" in reject.json()["error"]["message"]


def _llm_calls(llm: LLMServer) -> None:
    llm.script(
        Reply("a", input_tokens=1000, output_tokens=200),
        Reply("b", input_tokens=2000, output_tokens=100),
        Reply("c", input_tokens=500, output_tokens=50),
    )

    def ask(model: str) -> str:
        client = openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        return r.choices[0].message.content or ""

    @wflo.workflow(name="cost-research")
    def research() -> str:
        return ask("gpt-4o-mini") + ask("gpt-4o")

    @wflo.workflow(name="cost-triage")
    def triage() -> str:
        return ask("gpt-4o-mini")

    research.options(id="cost-r1", tenant="acme").run()
    triage.options(id="cost-t1", tenant="globex").run()


def test_costs_by_group_and_top_runs_scoped_by_tenant(env: dict[str, Any]) -> None:
    with LLMServer() as llm:
        _llm_calls(llm)
    c = env["client"]
    root = access().local("user:root")
    viewer_acme = Api(c, tokens().create("v-acme", "viewer", "tenant:acme", who=root)[1])
    by_model = env["viewer"].get("/api/v1/costs?group=model").json()
    assert {r["key"] for r in by_model["rows"]} == {"gpt-4o-mini", "gpt-4o"}
    assert by_model["total"]["calls"] == 3 and by_model["total"]["input_tokens"] == 3500
    assert Decimal(by_model["total"]["cost_usd"]) == sum(Decimal(r["cost_usd"]) for r in by_model["rows"]) > 0
    events = [e.data for run in ("cost-r1", "cost-t1") for e in _config.get_store().events(run)
              if e.type == "call.completed"]  # fmt: skip
    assert Decimal(by_model["total"]["cost_usd"]) == sum(Decimal(d["cost_usd"]) for d in events)
    days = env["viewer"].get("/api/v1/costs?group=day&split=model&since=1d").json()["rows"]
    assert len(days) == 1 and set(days[0]["split"]) == {"gpt-4o-mini", "gpt-4o"}
    acme = viewer_acme.get("/api/v1/costs?group=workflow&tenant=acme").json()
    assert [r["key"] for r in acme["rows"]] == ["cost-research"] and acme["total"]["calls"] == 2
    assert viewer_acme.get("/api/v1/costs?group=workflow").status_code == 403  # all tenants: no
    assert viewer_acme.get("/api/v1/costs?group=workflow&tenant=globex").status_code == 403
    top = viewer_acme.get("/api/v1/costs/top-runs?tenant=acme").json()
    assert [(r["run_id"], r["workflow"], r["status"]) for r in top] == [("cost-r1", "cost-research", "succeeded")]
    assert env["viewer"].get("/api/v1/costs?group=colour").status_code == 400
    assert env["viewer"].get("/api/v1/costs?since=yesterday-ish").status_code == 400
    assert env["viewer"].get("/api/v1/costs?since=2030-01-01").json()["rows"] == []


def test_budgets_usage_and_alerts(env: dict[str, Any]) -> None:
    admin = env["budgets"]
    assert admin.put("/api/v1/budgets", {"scope": "tenant:acme", "usd": "0.001", "period": "day"}).status_code == 200
    with LLMServer() as llm:
        _llm_calls(llm)  # acme spends past its small daily limit's thresholds
    (b,) = [x for x in admin.get("/api/v1/budgets").json() if x["scope"] == "tenant:acme"]
    assert b["period"] == "day" and Decimal(b["spent_usd"]) > 0 and b["alerts"] == [50, 80, 100]
    assert b["alerted"] and Decimal(b["remaining_usd"]) == Decimal(b["limit_usd"]) - Decimal(b["spent_usd"])
    usage = admin.get("/api/v1/budgets/usage?scope=tenant:acme").json()
    assert usage[0]["period_start"] == b["period_start"] and usage[0]["spent_usd"] == b["spent_usd"]
    alerts = admin.get("/api/v1/budgets/alerts").json()
    assert alerts and {a["scope"] for a in alerts} == {"tenant:acme"} and alerts[0]["run_id"] == "cost-r1"
    root = access().local("user:root")
    globex = Api(env["client"], tokens().create("v-globex", "viewer", "tenant:globex", who=root)[1])
    assert globex.get("/api/v1/budgets/alerts?tenant=globex").json() == []
    assert globex.get("/api/v1/budgets/usage?scope=tenant:acme").status_code == 403
    assert globex.get("/api/v1/budgets?tenant=globex").json() == []


def test_audit_verify_checks_the_spend_book(env: dict[str, Any]) -> None:
    """The costs' book is not chained: a row forged into it fails the API's verification (as
    ``wflo audit verify``), naming the run; ``spend_book: false`` skips that pass."""
    decisionsapp.refunds.options(tenant="acme").run("o-6", 20.0)
    auditor = env["auditor"]
    clean = auditor.post("/api/v1/audit/verify", {}).json()
    assert clean["ok"] and clean["spend_book"]["ok"] and "agrees" in clean["spend_book"]["verdict"]
    store = _config.get_store()
    store.write(
        lambda cur: store.execute(
            cur,
            "INSERT INTO ledger_spend (hour, run_id, model, workflow, tenant, calls, cost_usd, estimated_usd, "
            "input_tokens, output_tokens) VALUES ('2026-01-01T03:00', 'ghost-run', 'gpt-4o', 'wf', 'acme', 1, "
            "'9.5', '0', 10, 10)",
            (),
        )
    )
    forged = auditor.post("/api/v1/audit/verify", {}).json()
    assert forged["ok"] is False and not forged["broken"]  # the chains are intact: the book is not
    (finding,) = forged["spend_book"]["findings"]
    assert (finding["run_id"], finding["kind"]) == ("ghost-run", "no-run") and "no such run" in finding["describe"]
    skipped = auditor.post("/api/v1/audit/verify", {"spend_book": False}).json()
    assert skipped["ok"] and skipped["spend_book"] is None
    # With ``since``, the book's check is scoped as the chains' are: the forged row is dated 2026-01-01.
    later = auditor.post("/api/v1/audit/verify", {"since": "2026-02-01"}).json()
    assert later["ok"] and later["spend_book"]["ok"], later["spend_book"]
    earlier = auditor.post("/api/v1/audit/verify", {"since": "2025-12-31"}).json()
    assert [f["run_id"] for f in earlier["spend_book"]["findings"]] == ["ghost-run"]


def test_audit_verify_checkpoints_export_and_report(env: dict[str, Any], tmp_path: Path) -> None:
    from wflo.audit import write_checkpoint
    from wflo.audit._checkpoint import generate_key

    decisionsapp.refunds.options(tenant="acme").run("o-5", 20.0)
    auditor = env["auditor"]
    assert env["viewer"].post("/api/v1/audit/verify", {}).status_code == 403
    verdict = auditor.post("/api/v1/audit/verify", {}).json()
    assert verdict["ok"] and verdict["chains"] >= 2 and not verdict["broken"]
    assert all(r["ok"] and r["verdict"] for r in verdict["reports"])
    assert auditor.post("/api/v1/audit/verify", {"since": "2030-01-01"}).json()["chains"] == 1  # the system chain
    assert auditor.post("/api/v1/audit/verify", {"since": "soon"}).status_code == 400

    generate_key(tmp_path / "key.pem")
    doc = write_checkpoint(_config.get_store(), tmp_path / "key.pem", tmp_path / "cp.json", by="user:root")
    (cp,) = auditor.get("/api/v1/audit/checkpoints").json()
    assert cp["merkle_root"] == doc["merkle_root"] and cp["by"] == "user:root"
    checked = auditor.post("/api/v1/audit/verify", {"checkpoint": doc}).json()
    assert checked["ok"] and checked["checkpoint"]["signature_ok"]
    forged = {**doc, "events": doc["events"] + 1}
    assert auditor.post("/api/v1/audit/verify", {"checkpoint": forged}).json()["ok"] is False

    resp = auditor.post("/api/v1/audit/export", {"format": "jsonl"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/zip"
    assert resp.headers["content-disposition"].startswith('attachment; filename="wflo-export-')
    with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        import hashlib

        assert hashlib.sha256(zf.read("events.jsonl")).hexdigest() == manifest["files"][0]["sha256"]
    assert manifest["by"] == "service:auditor" and manifest["events"] > 0
    exported = [e.data for e in _config.get_store().events("system") if e.type == "audit.exported"]
    assert exported[-1]["by"] == "service:auditor"
    assert auditor.post("/api/v1/audit/export", {"format": "xml"}).status_code == 400

    report = auditor.get("/api/v1/audit/report?since=1d")
    assert report.status_code == 200 and "wflo compliance report" in report.text
    assert "default-src 'none'" in report.headers["content-security-policy"]
    assert auditor.get("/api/v1/audit/report?since=1d&format=json").json()["verification"]["ok"] is True
    tenant_auditor = Api(env["client"], tokens().create("aud-acme", "auditor", "tenant:acme",
                                                       who=access().local("user:root"))[1])  # fmt: skip
    assert tenant_auditor.post("/api/v1/audit/verify", {}).status_code == 403  # the whole record: global only


def test_verify_names_a_tampered_event(sqlite_url: str, sqlite_env: dict[str, Any]) -> None:
    """(SQLite: on PostgreSQL a trigger refuses the UPDATE itself, tests/unit/store.)"""
    decisionsapp.refunds.options(id="tampered").run("o-6", 10.0)
    import sqlite3

    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE events SET data = replace(data, 'o-6', 'o-7') WHERE chain = 'tampered'")
    verdict = sqlite_env["auditor"].post("/api/v1/audit/verify", {}).json()
    assert verdict["ok"] is False
    assert [(b["chain"], b["kind"]) for b in verdict["broken"]] == [("tampered", "hash")]


def test_the_rule_is_shown_as_written() -> None:
    from wflo.approvals._policy import Approval, describe_rule

    def over_limit(amount: float, **_: object) -> bool:
        """Refunds above the desk's limit."""
        return amount > 100

    assert describe_rule(Approval(when=lambda amount, **_: amount > 100)) == "lambda amount, **_: amount > 100"
    # Two lambdas on one line: the one with these arguments.
    pair = (lambda rows, **_: rows > 1000, lambda table, **_: table == "prod")
    assert describe_rule(Approval(when=pair[1])) == 'lambda table, **_: table == "prod"'
    assert describe_rule(Approval(when=over_limit)).endswith("over_limit(): Refunds above the desk's limit.")
    assert describe_rule(Approval()) == "always"
    made = eval("lambda n: n > 1")  # no source file to read: named, not guessed
    assert describe_rule(Approval(when=made)) == "<lambda>()"


def test_costs_skip_a_damaged_event(env: dict[str, Any]) -> None:
    """A forged event that is not JSON (verify names it) does not take the costs page down."""
    with LLMServer() as llm:
        _llm_calls(llm)
    before = env["viewer"].get("/api/v1/costs").json()["total"]
    store = _config.get_store()
    store.write(
        lambda cur: store.execute(
            cur,
            "INSERT INTO events (chain, seq, type, at, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("cost-r1", 999, "call.completed", "2026-11-01T00:00:00.000000Z", "{not json", "x", "y"),
        )
    )
    after = env["viewer"].get("/api/v1/costs")
    assert after.status_code == 200 and after.json()["total"] == before
    assert env["viewer"].get("/api/v1/costs/top-runs").json()[0]["run_id"] == "cost-r1"
