"""The runs API on both stores: list filters and keyset pages, detail, typed events, cancel,
resume, retry, bulk actions, tenant scoping, and the live stream (issue 17)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import wflo
from panel import serve
from wflo import _config
from wflo.approvals import inbox
from wflo.auth import access, tokens
from wflo.cost import run_spend, spend
from wflo.cost._ledger import Booking, CostRequest, Ledger
from wflo.server import _runs_live, create_app
from wflo.store import Head, NewEvent, Store


@pytest.fixture
def app(configured: str) -> FastAPI:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    return create_app()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def bearer(role: str, scope: str = "*") -> dict[str, str]:
    _, secret = tokens().create(f"{role}-{uuid.uuid4().hex[:6]}", role, scope, who=access().local("user:root"))
    return {"Authorization": f"Bearer {secret}"}


def store() -> Store:
    return _config.get_store()


def make_run(workflow: str = "wf", tenant: str | None = None, run_id: str | None = None, **kw: Any) -> str:
    rid = run_id or f"run-{uuid.uuid4().hex[:10]}"
    store().create_run(run_id=rid, workflow=workflow, input={"args": [1], "kwargs": {}}, tenant=tenant, **kw)
    return rid


def charged(run_id: str, events: list[NewEvent]) -> list[Any]:
    """The store ops that book the priced calls among ``events`` in the spend book, as the
    engine does in the transaction that records them."""
    ops = []
    for e in events:
        if e.type.startswith("call.") and e.data.get("cost_usd") and e.data.get("kind") in ("llm", "tool"):
            usage = e.data.get("usage") or {}
            name = e.data["name"] if e.data["kind"] == "llm" else f"tool:{e.data['name']}"
            booking = Booking(name, False, int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)))
            ops.append(Ledger(store()).book_op(run_id, Decimal(e.data["cost_usd"]), lambda b=booking: b))
    return ops


def finish(
    run_id: str, status: str = "succeeded", error: str | None = None, events: list[NewEvent] | None = None
) -> None:
    r = store().get_run(run_id)
    err = {"type": "ValueError", "message": error} if error else None
    store().append(
        run_id, Head(r.last_seq, r.last_hash),
        [*(events or []), NewEvent("run.completed", {"output": 1}) if not error else NewEvent("run.failed", {"error": err})],
        owner=None, status=status, output=None if error else 1, error=err, finish=True,
        ops=charged(run_id, events or []),
    )  # fmt: skip


def llm_event(call: str, cost: str, *, clamped: bool = False) -> NewEvent:
    body = {"choices": [{"message": {"role": "assistant", "content": f"answer {call}"}, "finish_reason": "stop"}]}
    data: dict[str, Any] = {
        "kind": "llm", "call": call, "name": "gpt-4o-mini", "provider": "openai", "cost_usd": cost,
        "reserved_usd": "0.01", "ms": 12.5, "usage": {"input_tokens": 13, "output_tokens": 40},
        "output": {"body": json.dumps(body), "status": 200},
    }  # fmt: skip
    if clamped:
        data["clamped"] = {"field": "max_tokens", "from": 800, "to": 144}
    return NewEvent("call.completed", data)


# ------------------------------------------------------------------------- list
def test_list_pages_by_keyset_without_losing_or_repeating_a_run(client: TestClient) -> None:
    ids = [make_run(workflow="pager") for _ in range(23)]
    # Ten runs created in the same microsecond: the id breaks the tie, pages stay exact.
    tied = ids[5:15]
    store().write(lambda cur: [store().execute(cur, "UPDATE runs SET created_at = ? WHERE id = ?",
                                               ("2026-01-01T00:00:00.000000Z", rid)) for rid in tied])  # fmt: skip
    headers = bearer("viewer")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        resp = client.get("/api/v1/runs", params={"workflow": "pager", "limit": 4, "cursor": cursor}, headers=headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        seen += [r["id"] for r in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        make_run(workflow="pager")  # a run created while paging lands on page 1, not in the middle
    assert len(seen) == len(set(seen)) == 23 and set(seen) == set(ids) and pages == 6
    keys = {r: (store().get_run(r).created_at, r) for r in ids}
    assert seen == sorted(ids, key=keys.__getitem__, reverse=True)
    assert "created_at" in body["items"][0] and body["items"][0]["cost_usd"] == "0"


def test_list_filters(client: TestClient) -> None:
    a = make_run(workflow="alpha", tenant="acme")
    b = make_run(workflow="beta", tenant="acme")
    c = make_run(workflow="alpha", tenant="globex")
    finish(a, events=[llm_event("1", "0.25"), llm_event("2", "0.5")])
    finish(b, "failed", error="the Quota_Exceeded 100% thing")
    h = bearer("viewer")

    def ids(**params: Any) -> list[str]:
        resp = client.get("/api/v1/runs", params=params, headers=h)
        assert resp.status_code == 200, resp.text
        return [r["id"] for r in resp.json()["items"]]

    assert ids(workflow="alpha") == [c, a]
    assert ids(workflow="alpha,beta") == [c, b, a]
    assert ids(status="failed,succeeded") == [b, a]
    assert ids(status="queued") == [c]
    assert ids(tenant="acme") == [b, a]
    assert ids(q="quota_exceeded 100%") == [b]  # case-insensitive, % and _ taken literally
    assert ids(q="100_") == [] and ids(q=c[4:12]) == [c]
    assert ids(min_cost_usd="0.75") == [a] and ids(min_cost_usd="0.76") == []
    assert ids(since="1h", workflow="alpha") == [c, a] and ids(until="2000-01-01") == []
    listed = client.get("/api/v1/runs", params={"workflow": "alpha"}, headers=h).json()["items"]
    assert listed[1]["cost_usd"] == "0.75" and listed[1]["status"] == "succeeded"
    errs = client.get("/api/v1/runs", params={"status": "failed"}, headers=h).json()["items"][0]["error"]
    assert errs["message"] == "the Quota_Exceeded 100% thing"


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"status": "done"}, "unknown status done"),
        ({"since": "last tuesday"}, "invalid since"),
        ({"min_cost_usd": "cheap"}, "min_cost_usd must be"),
        ({"min_cost_usd": "-1"}, "min_cost_usd must be"),
        ({"limit": "501"}, "limit must be between 1 and 500"),
        ({"limit": "0"}, "limit must be between 1 and 500"),
        ({"cursor": "not-a-cursor"}, "cursor is not one this server gave out"),
    ],
)
def test_bad_filters_are_422_with_a_clear_message(client: TestClient, params: dict[str, str], says: str) -> None:
    resp = client.get("/api/v1/runs", params=params, headers=bearer("viewer"))
    assert resp.status_code == 422 and says in resp.json()["detail"], resp.text


def test_tenant_scoping(client: TestClient) -> None:
    mine = make_run(tenant="acme")
    theirs = make_run(tenant="globex")
    h = bearer("viewer", "tenant:acme")
    assert [r["id"] for r in client.get("/api/v1/runs?tenant=acme", headers=h).json()["items"]] == [mine]
    assert client.get("/api/v1/runs", headers=h).status_code == 403  # every tenant needs a global grant
    assert client.get("/api/v1/runs?tenant=globex", headers=h).status_code == 403
    assert client.get(f"/api/v1/runs/{theirs}", headers=h).status_code == 403
    assert client.get(f"/api/v1/runs/{theirs}/events", headers=h).status_code == 403
    assert client.get(f"/api/v1/runs/{mine}", headers=h).status_code == 200
    assert client.post(f"/api/v1/runs/{mine}/cancel", headers=h).status_code == 403  # a viewer
    assert client.get("/api/v1/runs/nope", headers=bearer("viewer")).status_code == 404
    assert client.get("/api/v1/runs/nope/events", headers=bearer("viewer")).status_code == 404
    assert client.post("/api/v1/runs/nope/cancel", headers=bearer("operator")).status_code == 404


# ------------------------------------------------------------------------- detail and events
def test_detail_and_typed_timeline(client: TestClient) -> None:
    @wflo.step
    def lookup(order: str) -> str:
        return f"order {order}: shipped"

    @wflo.workflow(name="tests.runs_api.support")
    def support(order: str) -> str:
        return lookup(order)

    support.options(id="real-run").run("A-1")
    parent = make_run(workflow="agent", tenant="acme", options={"budget": {"usd": "1"}})
    child = make_run(workflow="agent.child", tenant="acme", parent_id=parent)
    breaker = {"call": "3", "target": "openai", "from": "closed", "to": "open", "failures": 5}
    sandbox = {"kind": "sandbox", "call": "4", "name": "bwrap", "ms": 30.0, "limits": {"cpu_seconds": 1},
               "sandbox": {"exit_code": None, "killed_by": "cpu", "backend": "bwrap"}}  # fmt: skip
    refused = {"kind": "llm", "call": "5", "name": "gpt-4o-mini", "ms": 0.0,
               "error": {"code": "budget_exceeded", "type": "BudgetExceededError", "message": "budget run:x"}}  # fmt: skip
    loop = {"call": "6", "detector": "max_repeats", "evidence": {"count": 4, "limit": 3}}
    finish(parent, events=[
        llm_event("1", "0.125"), llm_event("2", "0.25", clamped=True), NewEvent("breaker.transition", breaker),
        NewEvent("call.completed", sandbox), NewEvent("call.failed", refused), NewEvent("loop.stopped", loop),
        NewEvent("budget.threshold", {"call": "2", "scope": f"run:{parent}", "percent": 50, "spent": "0.5", "limit": "1"}),
    ])  # fmt: skip
    inbox().create(
        approval_id=f"ap-{parent}", run_id=parent, call_id="9", tool="refund", message="refund 5",
        action={"tool": "refund", "kwargs": {}}, approvers=[], quorum=1, requested_by="user:agent",
        timeout_at=None, on_timeout="reject", escalate_to=[],
    )  # fmt: skip
    h = bearer("viewer", "tenant:acme")
    d = client.get(f"/api/v1/runs/{parent}", headers=h).json()
    assert d["status"] == "succeeded" and d["cost"]["spent_usd"] == "0.375" and d["cost"]["reserved_usd"] == "0"
    assert [c["id"] for c in d["children"]] == [child]
    assert [a["id"] for a in d["approvals"]] == [f"ap-{parent}"] and d["approvals"][0]["status"] == "pending"
    assert d["verify"]["ok"] is True and d["verify"]["count"] == 9
    items = client.get(f"/api/v1/runs/{parent}/events", headers=h).json()["items"]
    kinds = [(i["type"], i["kind"]) for i in items]
    assert kinds == [("run.created", "run"), ("call.completed", "llm"), ("call.completed", "llm"),
                     ("breaker.transition", "breaker"), ("call.completed", "sandbox"), ("call.failed", "llm"),
                     ("loop.stopped", "loop"), ("budget.threshold", "budget"), ("run.completed", "run")]  # fmt: skip
    llm = items[2]
    assert llm["model"] == "gpt-4o-mini" and llm["tokens"]["output"] == 40 and llm["cost_usd"] == "0.25"
    assert llm["latency_ms"] == 12.5 and llm["answer"] == "answer 2" and llm["budget"]["clamped"]["to"] == 144
    assert (
        items[3]["to_state"] == "open" and items[4]["killed_by"] == "cpu" and items[4]["limits"] == {"cpu_seconds": 1}
    )
    assert items[5]["budget"]["refused"] is True and "refused by budget" in items[5]["title"]
    assert items[6]["detector"] == "max_repeats" and items[7]["percent"] == 50
    # Paging: after and limit; the head says how far the journal goes.
    page = client.get(f"/api/v1/runs/{parent}/events?after=2&limit=3", headers=h).json()
    assert [i["seq"] for i in page["items"]] == [3, 4, 5] and page["next_after"] == 5 and page["head"] == 9
    assert client.get(f"/api/v1/runs/{parent}/events?limit=5000", headers=h).status_code == 422
    steps = client.get("/api/v1/runs/real-run/events", headers=bearer("viewer")).json()["items"]
    step = next(i for i in steps if i["type"] == "call.completed")
    assert step["kind"] == "step" and step["output"] == "order A-1: shipped" and step["name"].endswith("lookup")
    # A forged projection (the head no longer matches the chain) shows in the verdict.
    store().write(lambda cur: store().execute(cur, "UPDATE runs SET last_hash = ? WHERE id = ?", ("f" * 64, parent)))
    bad = client.get(f"/api/v1/runs/{parent}", headers=h).json()["verify"]
    assert bad["ok"] is False and bad["kind"] == "head"


# ------------------------------------------------------------------------- actions
def test_cancel_records_who_and_is_idempotent(client: TestClient) -> None:
    rid = make_run(tenant="acme")
    done = make_run(tenant="acme")
    finish(done)
    h = bearer("operator", "tenant:acme")
    resp = client.post(f"/api/v1/runs/{rid}/cancel", headers=h)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert client.post(f"/api/v1/runs/{rid}/cancel", headers=h).json()["status"] == "cancelled"
    asked = [e.data for e in store().events("system") if e.type == "run.cancel_requested"]
    assert asked == [{"run_id": rid, "by": asked[0]["by"], "via": "api"}] and asked[0]["by"].startswith("service:")
    conflict = client.post(f"/api/v1/runs/{done}/cancel", headers=h)
    assert conflict.status_code == 409 and "already ended (succeeded)" in conflict.json()["detail"]


def test_resume_hands_a_blocked_run_to_a_worker(client: TestClient) -> None:
    @wflo.workflow(name="tests.runs_api.blocked")
    def blocked(x: int) -> int:
        return x * 10

    rid = make_run(workflow="tests.runs_api.blocked", tenant="acme")
    r = store().get_run(rid)
    store().append(rid, Head(r.last_seq, r.last_hash), [NewEvent("run.blocked", {"reason": "non_determinism"})],
                   owner=None, status="blocked")  # fmt: skip
    h = bearer("operator", "tenant:acme")
    assert client.post(f"/api/v1/runs/{make_run()}/resume", headers=bearer("operator")).json()["resumed"] is False
    resp = client.post(f"/api/v1/runs/{rid}/resume", headers=h)
    assert resp.status_code == 200 and resp.json() == {**resp.json(), "status": "queued", "resumed": True}
    last = store().events(rid)[-1]
    assert last.type == "run.resume_requested" and last.data["via"] == "api" and last.data["status_before"] == "blocked"
    assert wflo.engine.Worker(workflows=["tests.runs_api.blocked"]).run(max_runs=1, idle_timeout=5) == 1
    assert store().get_run(rid).status == "succeeded" and store().get_run(rid).output == 10
    assert client.post(f"/api/v1/runs/{rid}/resume", headers=h).status_code == 409  # ended: retry instead


def test_retry_starts_a_new_run_once_per_idempotency_key(client: TestClient) -> None:
    failed = make_run(workflow="flaky", tenant="acme", options={"serializer": "json", "started_by": "user:x"})
    finish(failed, "failed", error="boom")
    running = make_run(workflow="flaky", tenant="acme")
    h = {**bearer("operator", "tenant:acme"), "Idempotency-Key": "k-1"}
    first = client.post(f"/api/v1/runs/{failed}/retry", headers=h)
    assert first.status_code == 201, first.text
    again = client.post(f"/api/v1/runs/{failed}/retry", headers=h)
    new = first.json()
    assert again.json()["id"] == new["id"] != failed and new["retry_of"] == failed
    assert new["status"] == "queued" and new["tenant"] == "acme" and new["input"] == {"args": [1], "kwargs": {}}
    assert new["started_by"].startswith("service:")
    created = store().events(new["id"])[0].data
    assert created["retry_of"] == failed and created["via"] == "api"
    other = client.post(f"/api/v1/runs/{failed}/retry", headers={**h, "Idempotency-Key": "k-2"}).json()["id"]
    assert other != new["id"]
    # The same key on another request is refused by the server's Idempotency-Key layer.
    assert client.post(f"/api/v1/runs/{running}/retry", headers=h).status_code == 422
    assert client.post(f"/api/v1/runs/{running}/retry", headers={**h, "Idempotency-Key": "k-3"}).status_code == 409
    assert client.post(f"/api/v1/runs/{failed}/retry", headers=bearer("viewer")).status_code == 403


def test_bulk_acts_only_where_the_grants_reach(client: TestClient) -> None:
    acme = [make_run(workflow="batch", tenant="acme") for _ in range(3)]
    globex = [make_run(workflow="batch", tenant="globex") for _ in range(2)]
    finish(acme[0])
    op = bearer("operator", "tenant:acme")
    body = {"action": "cancel", "filter": {"workflow": "batch"}}
    assert client.post("/api/v1/runs/bulk", json=body, headers=op).status_code == 403  # no tenant: everywhere
    scoped = {"action": "cancel", "filter": {"workflow": "batch", "tenant": "acme"}}
    out = client.post("/api/v1/runs/bulk", json=scoped, headers=op).json()
    assert (out["matched"], out["acted"], out["more"]) == (2, 2, False)  # the ended one is not selected
    assert {store().get_run(r).status for r in acme[1:]} == {"cancelled"}
    assert {store().get_run(r).status for r in globex} == {"queued"}
    assert client.post("/api/v1/runs/bulk", json=body, headers=bearer("viewer")).status_code == 403
    bad = client.post(
        "/api/v1/runs/bulk", json={"action": "cancel", "filter": {"colour": "red"}}, headers=bearer("admin")
    )
    assert bad.status_code == 422 and "unknown filter colour" in bad.json()["detail"]
    assert client.post("/api/v1/runs/bulk", json={"action": "delete"}, headers=bearer("admin")).status_code == 422
    out = client.post("/api/v1/runs/bulk", json={"action": "resume", "filter": {}}, headers=bearer("admin")).json()
    assert out["matched"] == 0 and out["filter"] == {"status": "blocked"}
    out = client.post("/api/v1/runs/bulk", json=body, headers=bearer("admin")).json()
    assert (out["matched"], out["acted"]) == (2, 2)
    assert {store().get_run(r).status for r in globex} == {"cancelled"}
    who = {e.data["run_id"]: e.data["via"] for e in store().events("system") if e.type == "run.cancel_requested"}
    assert set(who) == set(acme[1:] + globex) and set(who.values()) == {"api"}


# ------------------------------------------------------------------------- live
APPEND = """
import json, sys, time
from wflo.store import Head, NewEvent, open_store
st = open_store(sys.argv[1])
r = st.get_run(sys.argv[2])
st.append(r.id, Head(r.last_seq, r.last_hash), [NewEvent("call.completed", {"kind": "tool", "call": "1",
          "name": "probe", "output": "from another process"})], owner=None)
print(time.time(), flush=True)
"""


def _read_sse(resp: httpx.Response, found: list[tuple[float, dict[str, Any]]], stop: threading.Event) -> None:
    try:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                found.append((time.time(), json.loads(line[5:])))
            if stop.is_set():
                return
    except httpx.HTTPError:
        return


def test_stream_shows_an_event_appended_by_another_process_within_a_second(
    app: FastAPI, configured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_runs_live, "KEEPALIVE_SECONDS", 0.3)  # so the readers here notice they may stop
    rid = make_run(tenant="acme")
    with serve() as base, httpx.Client(base_url=base, timeout=10) as http:
        h = bearer("viewer", "tenant:acme")
        assert http.get(f"/api/v1/stream?run={rid}", headers=bearer("viewer", "tenant:globex")).status_code == 403
        assert http.get("/api/v1/stream", headers=h).status_code == 403  # all tenants: a global grant
        found: list[tuple[float, dict[str, Any]]] = []
        feed: list[tuple[float, dict[str, Any]]] = []
        stop = threading.Event()
        with http.stream("GET", f"/api/v1/stream?run={rid}", headers=h) as one, \
                http.stream("GET", "/api/v1/stream?tenant=acme", headers=h) as every:  # fmt: skip
            assert one.headers["content-type"].startswith("text/event-stream")
            readers = [threading.Thread(target=_read_sse, args=(r, out, stop), daemon=True)
                       for r, out in ((one, found), (every, feed))]  # fmt: skip
            for t in readers:
                t.start()
            deadline = time.time() + 5
            while not found and time.time() < deadline:  # the stream's first word: the run's status
                time.sleep(0.02)
            assert found and found[0][1]["kind"] == "run" and found[0][1]["run"]["status"] == "queued"
            out = subprocess.run([sys.executable, "-c", APPEND, configured, rid], capture_output=True, text=True,
                                 timeout=60, check=True)  # fmt: skip
            appended_at = float(out.stdout.split()[-1])
            deadline = time.time() + 5
            while time.time() < deadline and not any(m["kind"] == "event" for _, m in found):
                time.sleep(0.01)
            got = [(t, m) for t, m in found if m["kind"] == "event"]
            assert got and got[0][1]["event"]["output"] == "from another process"
            assert got[0][0] - appended_at < 1.0, f"{got[0][0] - appended_at:.3f} s"
            other = make_run(tenant="globex")
            mine = make_run(tenant="acme")
            deadline = time.time() + 5
            while time.time() < deadline and not any(m.get("run", {}).get("id") == mine for _, m in feed):
                time.sleep(0.01)
            feed_ids = [m["run"]["id"] for _, m in feed if m["kind"] == "run"]
            assert mine in feed_ids and rid in feed_ids and other not in feed_ids
            req, _ = inbox().create(
                approval_id=f"ap-{mine}", run_id=mine, call_id="1", tool="refund", message="refund 5",
                action={"tool": "refund", "kwargs": {}}, approvers=[], quorum=1, requested_by="user:agent",
                timeout_at=None, on_timeout="reject", escalate_to=[],
            )  # fmt: skip
            decided = http.post(f"/api/v1/approvals/{req.id}/decide", json={"decision": "approve"},
                                headers={**bearer("approver", "tenant:acme"), "If-Match": req.action_hash})  # fmt: skip
            assert decided.status_code == 200, decided.text
            deadline = time.time() + 5
            while time.time() < deadline and not any(m["kind"] == "approval" for _, m in feed):
                time.sleep(0.01)
            approvals = [m["approval"] for _, m in feed if m["kind"] == "approval"]
            assert approvals and approvals[0] == {"id": req.id, "run_id": mine, "status": "approved", "tool": "refund"}
            stop.set()
        # Reconnecting with Last-Event-ID resumes after that event: nothing is sent twice.
        with http.stream("GET", f"/api/v1/stream?run={rid}", headers={**h, "Last-Event-ID": "1"}) as again:
            for line in again.iter_lines():
                if line.startswith("data:") and json.loads(line[5:])["kind"] == "event":
                    assert json.loads(line[5:])["event"]["seq"] == 2
                    break


def test_a_rewritten_old_event_shows_once_the_chain_is_verified_whole(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run page verifies the whole chain at most once a minute (new links in between, and
    always the recorded head); a rewrite of an old link shows at the next whole verification."""
    from wflo.server import _runs_detail

    rid = make_run()
    finish(rid, events=[llm_event("1", "0.5")])
    h = bearer("viewer")
    first = client.get(f"/api/v1/runs/{rid}", headers=h).json()
    assert first["verify"]["ok"] is True and first["cost"]["spent_usd"] == "0.5"
    sql = "UPDATE events SET data = replace(data, '0.5', '0.01') WHERE chain = ? AND seq = 2"
    if store().dialect == "postgresql":  # the append-only trigger is lifted only to forge the row
        store().write(lambda cur: (cur.execute("ALTER TABLE events DISABLE TRIGGER USER"),
                                   store().execute(cur, sql, (rid,)),
                                   cur.execute("ALTER TABLE events ENABLE TRIGGER USER")))  # fmt: skip
    else:
        store().write(lambda cur: store().execute(cur, sql, (rid,)))
    monkeypatch.setattr(_runs_detail, "FULL_VERIFY_SECONDS", 0.0)
    bad = client.get(f"/api/v1/runs/{rid}", headers=h).json()["verify"]
    assert bad["ok"] is False and bad["seq"] == 2 and bad["kind"] == "hash"


def test_a_runs_cost_follows_its_charges(client: TestClient) -> None:
    """A run's cost is what the ledger charged it so far, read afresh as the run goes on."""
    rid = make_run(workflow="spender")
    h = bearer("viewer")

    def listed() -> str:
        return str(client.get("/api/v1/runs?workflow=spender", headers=h).json()["items"][0]["cost_usd"])

    assert listed() == "0"
    for call, cost, total in (("1", "0.5", "0.5"), ("2", "0.25", "0.75"), ("3", "0.000001", "0.750001")):
        r = store().get_run(rid)
        event = llm_event(call, cost)
        store().append(rid, Head(r.last_seq, r.last_hash), [event], owner=None, ops=charged(rid, [event]))
        assert listed() == total
        assert client.get(f"/api/v1/runs/{rid}", headers=h).json()["cost"]["spent_usd"] == total


def test_a_text_search_reads_a_bounded_window_per_page(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A text (or cost) filter no index serves reads at most SCAN_WINDOW runs per page; the
    cursor goes on from where the page stopped, so every match is found exactly once."""
    from wflo.server import _runs_query

    monkeypatch.setattr(_runs_query, "SCAN_WINDOW", 3)
    ids = [make_run(workflow="needle" if i in (1, 6, 7) else "hay") for i in range(9)]
    h = bearer("viewer")
    pages, found, cursor = [], [], None
    while True:
        body = client.get("/api/v1/runs", params={"q": "needle", "limit": 1, "cursor": cursor}, headers=h).json()
        pages.append(len(body["items"]))
        found += [r["id"] for r in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert found == [ids[7], ids[6], ids[1]]  # newest first, each once
    assert 0 in pages  # a window without a match still hands on its cursor


def test_a_stream_ends_by_itself_so_a_stopping_server_is_not_held(
    app: FastAPI, configured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn lets open responses finish before it stops: a stream that never ended would hold
    a deploy forever. Each stream ends after STREAM_SECONDS; the browser reconnects."""
    monkeypatch.setattr(_runs_live, "STREAM_SECONDS", 0.5)
    rid = make_run()
    h = bearer("viewer")
    with serve() as base:
        t0 = time.monotonic()
        with httpx.stream("GET", f"{base}/api/v1/stream?run={rid}", headers=h, timeout=10) as resp:
            lines = list(resp.iter_lines())
        assert time.monotonic() - t0 < 5 and lines[0] == "retry: 1000"
        with httpx.stream("GET", f"{base}/api/v1/stream", headers=h, timeout=10) as resp:
            assert resp.status_code == 200
            held = threading.Thread(target=lambda: list(resp.iter_lines()), daemon=True)
            held.start()
            held.join(5)
            assert not held.is_alive()


# ------------------------------------------------------------------------- cost: the spend book
def _timeline_cost(client: TestClient, rid: str, h: dict[str, str]) -> Decimal:
    items = client.get(f"/api/v1/runs/{rid}/events", headers=h).json()["items"]
    return sum((Decimal(i["cost_usd"]) for i in items if i.get("cost_usd")), Decimal(0))


def test_the_lists_cost_is_what_the_ledger_charged(client: TestClient) -> None:
    """For a mix of runs (LLM calls, a priced tool, a charged failure, nothing, a child), the
    list, the run page and ``wflo costs`` by run show the same figure, and the run page's
    per-call costs add up to it."""
    h = bearer("viewer")
    plain, mixed, idle = make_run(workflow="mix"), make_run(workflow="mix"), make_run(workflow="mix")
    child = make_run(workflow="mix", parent_id=mixed)
    lost_answer = {"kind": "llm", "call": "3", "name": "gpt-4o", "cost_usd": "0.0125", "error": {"type": "Timeout"}}
    tool = {"kind": "tool", "call": "4", "name": "paid", "cost_usd": "0.25", "output": 1}
    finish(plain, events=[llm_event("1", "0.000001")])
    finish(mixed, events=[llm_event("1", "0.5"), llm_event("2", "0.125"), NewEvent("call.failed", lost_answer),
                          NewEvent("call.completed", tool)])  # fmt: skip
    finish(child, events=[llm_event("1", "0.0625")])
    finish(idle)
    listed = {r["id"]: r["cost_usd"] for r in client.get("/api/v1/runs?workflow=mix", headers=h).json()["items"]}
    book = {r["key"]: r["cost_usd"] for r in spend(store(), "run")["rows"]}
    assert listed == {**book, idle: "0"} and listed[mixed] == "0.8875"
    for rid in (plain, mixed, idle, child):
        d = client.get(f"/api/v1/runs/{rid}", headers=h).json()
        assert d["cost"]["spent_usd"] == listed[rid] and d["cost"]["unknown_usd"] == "0"
        assert _timeline_cost(client, rid, h) == Decimal(listed[rid])
    page = client.get(f"/api/v1/runs/{mixed}", headers=h).json()
    assert [(c["id"], c["cost_usd"]) for c in page["children"]] == [(child, "0.0625")]
    ids = [r["id"] for r in client.get("/api/v1/runs?min_cost_usd=0.0625", headers=h).json()["items"]]
    assert ids == [child, mixed]
    assert [r["id"] for r in client.get("/api/v1/runs?min_cost_usd=0.8876", headers=h).json()["items"]] == []


def test_a_lost_call_costs_the_same_in_the_list_and_on_the_run_page(client: TestClient) -> None:
    """A call lost with its process is charged at its reservation when the reservation expires:
    from then on the list and the run page count it, before the journal records it."""
    h = bearer("viewer")
    rid = make_run(workflow="lossy")
    ledger = Ledger(store())
    ledger.set_limit(f"run:{rid}", "10")
    cost = CostRequest(input_cost=Decimal("0.001"), output_price_per_token=Decimal("0.00001"), output_cap=100)
    res = ledger.reserve(run_id=rid, scopes=[f"run:{rid}"], cost=cost, call_id="1", model="gpt-4o", ttl_seconds=-1)
    assert res is not None and res.amount == Decimal("0.002")
    event = llm_event("2", "0.25")
    r = store().get_run(rid)
    store().append(rid, Head(r.last_seq, r.last_hash), [event], owner=None, ops=charged(rid, [event]))

    def both() -> tuple[str, dict[str, Any]]:
        item = client.get("/api/v1/runs?workflow=lossy", headers=h).json()["items"][0]
        return item["cost_usd"], client.get(f"/api/v1/runs/{rid}", headers=h).json()["cost"]

    listed, page = both()
    assert listed == page["spent_usd"] == "0.25" and page["reserved_usd"] == "0.002"
    assert ledger.expire() == 1
    listed, page = both()
    assert listed == page["spent_usd"] == "0.252" == run_spend(store(), [rid])[rid].to_eng_string()
    assert page["unknown_usd"] == "0.002" and page["reserved_usd"] == "0"
    # The journal's calls and the part not on it yet add up to the run's cost.
    assert _timeline_cost(client, rid, h) + Decimal(page["unknown_usd"]) == Decimal(listed)
    # The run resumes: the lost call goes on its journal (at its estimate), nothing counts twice.
    events, op = ledger.orphans(rid)
    r = store().get_run(rid)
    store().append(rid, Head(r.last_seq, r.last_hash), events, owner=None, ops=[op] if op else [])
    listed, page = both()
    assert listed == page["spent_usd"] == "0.252" and page["unknown_usd"] == "0"
    assert _timeline_cost(client, rid, h) == Decimal("0.252")
    assert [r["id"] for r in client.get("/api/v1/runs?min_cost_usd=0.252", headers=h).json()["items"]] == [rid]


def test_a_pruned_runs_cost_stays_in_the_list(client: TestClient) -> None:
    """The book keeps what was charged when the journal's events are gone (the cost no longer
    depends on the journal being there)."""
    h = bearer("viewer")
    rid = make_run(workflow="gone")
    finish(rid, events=[llm_event("1", "0.5")])
    sql = "DELETE FROM events WHERE chain = ? AND type = 'call.completed'"
    if store().dialect == "postgresql":  # the append-only trigger is lifted only for this
        store().write(lambda cur: (cur.execute("ALTER TABLE events DISABLE TRIGGER USER"),
                                   store().execute(cur, sql, (rid,)),
                                   cur.execute("ALTER TABLE events ENABLE TRIGGER USER")))  # fmt: skip
    else:
        store().write(lambda cur: store().execute(cur, sql, (rid,)))
    assert client.get("/api/v1/runs?workflow=gone", headers=h).json()["items"][0]["cost_usd"] == "0.5"
    assert client.get(f"/api/v1/runs/{rid}", headers=h).json()["cost"]["spent_usd"] == "0.5"
