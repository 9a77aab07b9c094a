"""Human approval against people trying to get around it, on SQLite and PostgreSQL: through the
real server (the API with tokens and browser sessions), other processes and racing threads.

Each test is an attack that worked once: what it did is in its docstring."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from wflo import _config
from wflo._errors import ApprovalForbiddenError, UserError
from wflo.approvals import ApprovalRequest, approvals, inbox
from wflo.approvals import _tables as tables
from wflo.auth import access, tokens
from wflo.engine import RunHandle, Worker

sys.path.insert(0, str(Path(__file__).parent))
import approvalapp


class Person:
    """Someone signed in to the panel (a browser session and its CSRF token)."""

    def __init__(self, app: FastAPI, principal: str) -> None:
        sid, self.csrf = tokens().open_session(principal, ttl=timedelta(hours=1))
        self.client = TestClient(app, cookies={"wflo_session": sid}, raise_server_exceptions=False)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.client.post(path, json=body, headers={"X-CSRF-Token": self.csrf})

    def token(self, name: str, role: str, scope: str) -> str:
        out = self.post("/api/v1/tokens", {"name": name, "role": role, "scope": scope})
        assert out.status_code == 201, out.text
        return str(out.json()["token"])

    def grant(self, principal: str, role: str, scope: str) -> None:
        out = self.post("/api/v1/grants", {"principal": principal, "role": role, "scope": scope})
        assert out.status_code == 201, out.text


def request(requested_by: str, approvers: list[str], quorum: int = 1, tenant: str = "acme") -> ApprovalRequest:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    _config.get_store().create_run(run_id=run_id, workflow="wf", input={}, tenant=tenant)
    req, _ = inbox().create(
        approval_id=f"ap-{run_id}", run_id=run_id, call_id="c1", tool="refund", message="refund 900",
        action={"tool": "refund", "args": [], "kwargs": {"usd": 900}}, approvers=approvers, quorum=quorum,
        requested_by=requested_by, timeout_at=None, on_timeout="reject", escalate_to=[],
    )  # fmt: skip
    return req


def decide(client: TestClient, req: ApprovalRequest, *, bearer: str | None = None, csrf: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {"X-CSRF-Token": csrf or ""}
    body = {"decision": "approve", "action_hash": req.action_hash}
    return client.post(f"/api/v1/approvals/{req.id}/decide", json=body, headers=headers)


# ----------------------------------------------------------------- one person, two principals
def test_a_token_the_requester_made_cannot_decide_their_request(app: FastAPI, client: TestClient) -> None:
    """Mallory, a tenant admin, made an approver token (service:puppet) and approved her own
    request with it: a request open to any approver (no approvers list) was approved 200."""
    acc = access()
    acc.grant("user:mallory", "admin", "tenant:acme", who=acc.local("user:root"))
    mallory = Person(app, "user:mallory")
    puppet = mallory.token("puppet", "approver", "tenant:acme")
    req = request("user:mallory", [])
    out = decide(client, req, bearer=puppet)
    assert out.status_code == 403, out.text
    assert "act for the same person (user:mallory)" in out.json()["error"]["message"]
    assert inbox().get(req.id).status == "pending" and inbox().votes(req.id) == []
    refused = [e.data for e in _config.get_store().events("system") if e.type == "access.refused"]
    assert refused[-1]["by"] == "service:puppet" and refused[-1]["permission"] == "approvals:decide"
    # The panel says so before anyone tries.
    shown = client.get(f"/api/v1/approvals/{req.id}", headers={"Authorization": f"Bearer {puppet}"}).json()
    assert shown["may_decide"] is False and "same person" in shown["why_not"]
    # A run the puppet asked for (a retry through the API) is its maker's request too.
    req2 = request("service:puppet", [])
    out = mallory.post(f"/api/v1/approvals/{req2.id}/decide", {"decision": "approve", "action_hash": req2.action_hash})
    assert out.status_code == 403 and "act for the same person" in out.text


@pytest.mark.parametrize("approvers", [[], ["role:finance"]])
def test_one_person_and_their_token_are_one_vote_of_a_quorum(
    app: FastAPI, client: TestClient, approvers: list[str]
) -> None:
    """Alice, a tenant admin, voted as herself, then as a token she made (service:alice-bot,
    holding the routing role too): a four-eyes request (quorum 2) was approved by one person."""
    acc = access()
    acc.grant("user:alice", "admin", "tenant:acme", who=acc.local("user:root"))
    alice = Person(app, "user:alice")
    bot = alice.token("alice-bot", "approver", "tenant:acme")
    alice.grant("user:alice", "finance", "tenant:acme")
    alice.grant("service:alice-bot", "finance", "tenant:acme")
    req = request("user:bob", approvers, quorum=2)
    assert decide(alice.client, req, csrf=alice.csrf).status_code == 200
    out = decide(client, req, bearer=bot)
    assert out.status_code == 403, out.text
    assert "a quorum counts people, not accounts" in out.json()["error"]["message"]
    assert inbox().get(req.id).status == "pending" and len(inbox().votes(req.id)) == 1
    # A token made with a token answers to the person behind the first one.
    relay = TestClient(app).post(
        "/api/v1/tokens", json={"name": "relay", "role": "approver", "scope": "tenant:acme"},
        headers={"Authorization": f"Bearer {alice.token('maker', 'admin', 'tenant:acme')}"},
    ).json()["token"]  # fmt: skip
    assert decide(client, req, bearer=relay).status_code == 403
    # Someone else completes the quorum.
    acc.grant("user:carol", "approver", "tenant:acme", who=acc.local("user:root"))
    acc.grant("user:carol", "finance", "tenant:acme", who=acc.local("user:root"))
    carol = Person(app, "user:carol")
    assert decide(carol.client, req, csrf=carol.csrf).json()["status"] == "approved"


@pytest.mark.parametrize("round_", range(3))
def test_a_person_and_their_token_racing_make_one_vote(configured: str, round_: int) -> None:
    """The same two votes sent at the same instant: each read the other's as not there yet."""
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    acc.grant("user:alice", "admin", "tenant:acme", who=acc.local("user:root"))
    alice = acc.of("user:alice", "panel")
    tokens().create("alice-bot", "approver", "tenant:acme", who=alice)
    req = request("user:bob", [], quorum=2)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def vote(principal: str) -> None:
        barrier.wait()
        try:
            done = inbox().decide(req.id, "approve", principal=principal, via="api", authenticated=True)
            outcomes.append(done.status)
        except ApprovalForbiddenError as exc:
            outcomes.append("refused" if "people, not accounts" in str(exc) else str(exc))

    threads = [threading.Thread(target=vote, args=(p,)) for p in ("user:alice", "service:alice-bot")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["pending", "refused"]
    assert inbox().get(req.id).status == "pending" and len(inbox().votes(req.id)) == 1


# ----------------------------------------------------------------- a vote as the deadline passes
@pytest.mark.postgres
def test_an_approver_replaced_by_an_escalation_cannot_slip_a_vote_in(pg_url: str) -> None:
    """Alice's vote, read as hers to cast, waited for the request's lock while the worker
    escalated it (her deadline had passed; the request went to user:cfo): it was then counted,
    and the request approved by someone who was no longer its approver, after her deadline.

    On PostgreSQL, where the test can see the vote wait for the lock (pg_stat_activity); the
    check is the same code on SQLite."""
    _config.configure(database=pg_url)
    store = _config.get_store()
    store.create_run(run_id="r-esc", workflow="wf", input={})
    inbox().create(
        approval_id="ap-esc", run_id="r-esc", call_id="c1", tool="refund", message="refund 900",
        action={"tool": "refund", "args": [], "kwargs": {}}, approvers=["user:alice"], quorum=1,
        requested_by="user:bob", timeout_at=store.now(-1), on_timeout="escalate", escalate_to=["user:cfo"],
    )  # fmt: skip
    locked, escalate = threading.Event(), threading.Event()
    holder_pid: list[int] = []

    def worker_escalates(cur: Any) -> None:  # what the worker's guard writes, holding the row
        tables.lock_for_decision(store, cur, "r-esc", "ap-esc")
        cur.execute("SELECT pg_backend_pid()")
        holder_pid.append(int(cur.fetchone()[0]))
        locked.set()
        assert escalate.wait(30)
        tables.escalate(store, cur, "ap-esc", approvers=["user:cfo"], timeout_at=store.now(3600), now=store.now())

    holder = threading.Thread(target=store.write, args=(worker_escalates,))
    holder.start()
    assert locked.wait(30)
    outcome: list[str] = []

    def alice_votes() -> None:
        try:
            outcome.append(inbox().decide("ap-esc", "approve", principal="user:alice").status)
        except ApprovalForbiddenError as exc:
            outcome.append(str(exc))

    voter = threading.Thread(target=alice_votes)
    voter.start()
    with psycopg.connect(pg_url, autocommit=True) as mon:
        blocked = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
        for _ in range(1000):
            row = mon.execute(blocked, (holder_pid[0],)).fetchone()
            if row and row[0]:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the vote never waited for the request's lock")
    escalate.set()
    holder.join(30)
    voter.join(30)
    assert len(outcome) == 1 and "not one of the approvers user:cfo" in outcome[0], outcome
    done = inbox().get("ap-esc")
    assert done.status == "pending" and done.approvers == ["user:cfo"] and inbox().votes("ap-esc") == []


# ----------------------------------------------------------------- edited arguments
@pytest.fixture
def agent(configured: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs started by user:agent-owner; user:fin may decide (role finance)."""
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:agent-owner")
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=0.05)
    approvals.grant("user:fin", "finance")
    return configured


def _waiting(workflow: Any, *args: Any) -> tuple[RunHandle, ApprovalRequest]:
    handle = workflow.start(*args)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    assert handle.status() == "waiting"
    [req] = approvals.list(run_id=handle.id)
    return handle, req


def test_an_edit_of_an_argument_given_positionally_is_refused_before_deciding(agent: str) -> None:
    """pay(to, *notes) keeps its values positional; an approver's edit of "to" was accepted
    (approved), and the approved call, given "to" twice, could not run: the run failed for good."""
    handle, req = _waiting(approvalapp.pays, "acct-1")
    assert req.action["args"] == ["acct-1", "invoice 7"]
    with pytest.raises(UserError, match="only the ones passed by name can change"):
        approvals.approve(req.id, principal="user:fin", args={"to": "acct-2"}, action_hash=req.action_hash)
    assert approvals.get(req.id).status == "pending" and inbox().votes(req.id) == []
    approvals.approve(req.id, principal="user:fin", action_hash=req.action_hash)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    assert handle.result(timeout=5) == "paid acct-1 (invoice 7)"


@pytest.mark.parametrize("edit", ['{"amount": NaN}', '{"amount": Infinity}', '{"order_id": "o", "amount": -Infinity}'])
def test_an_edit_that_is_not_json_is_a_one_line_error(agent: str, edit: str) -> None:
    """Python's JSON parser takes NaN and Infinity; the edit passed the type check ("a number")
    and the CLI died with a ValueError traceback from the hash."""
    _, req = _waiting(approvalapp.refunds, "o-nan", 250.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_DATABASE_URL=agent, WFLO_PRINCIPAL="user:fin", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-m", "wflo.cli", "approve", req.id, "--args", edit], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "edited arguments must be JSON values (no NaN or Infinity)" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert approvals.get(req.id).status == "pending" and inbox().votes(req.id) == []
