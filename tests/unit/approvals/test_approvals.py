"""P5: durable waits, policies, decisions, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import wflo
from wflo import _config
from wflo._errors import (
    ActionMismatchError,
    ApprovalClosedError,
    ApprovalForbiddenError,
    ApprovalNotFoundError,
    UserError,
)
from wflo.approvals import approvals
from wflo.engine import RunHandle, Worker

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import approvalapp  # noqa: E402


def _as(principal: str) -> None:
    os.environ["WFLO_PRINCIPAL"] = principal
    _config.configure(database=_config.settings().database, lease_seconds=5.0, poll_interval=0.05)


def _pending(run_id: str) -> str:
    reqs = approvals.list(run_id=run_id)
    assert len(reqs) == 1, reqs
    return reqs[0].id


def _serve(n: int = 1) -> None:
    Worker(concurrency=2, workflows=None).run(max_runs=n, idle_timeout=1.0)


@pytest.fixture
def app(configured: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:agent-owner")
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=0.05)
    approvals.grant("user:fin1", "finance")
    approvals.grant("user:fin2", "finance")
    approvals.grant("user:dba", "dba")
    return configured


def test_below_threshold_needs_no_approval(app: str) -> None:
    assert approvalapp.refunds.run("o1", 50.0) == "refunded 50.0 on o1"
    assert approvals.list(status=None) == []


def test_request_wait_approve_resume_by_worker(app: str) -> None:
    handle = approvalapp.refunds.start("o2", 500.0)
    _serve()
    assert handle.status() == "waiting"
    approval_id = _pending(handle.id)
    req = approvals.get(approval_id)
    assert req.action == {"tool": "refund", "args": [], "kwargs": {"order_id": "o2", "amount": 500.0}}
    assert req.requested_by == "user:agent-owner"
    with pytest.raises(ApprovalForbiddenError, match="requester"):
        approvals.approve(approval_id, principal="user:agent-owner")
    with pytest.raises(ApprovalForbiddenError, match="approvers"):
        approvals.approve(approval_id, principal="user:dba")
    with pytest.raises(ActionMismatchError):
        approvals.approve(approval_id, principal="user:fin1", action_hash="0" * 64)
    done = approvals.approve(approval_id, principal="user:fin1", action_hash=req.action_hash, via="cli")
    assert done.status == "approved" and done.decided_by == "user:fin1"
    _serve()
    assert handle.result(timeout=5) == "refunded 500.0 on o2"
    types = [e.type for e in handle.events()]
    assert types.index("approval.requested") < types.index("run.waiting") < types.index("approval.decided")
    decided = next(e for e in handle.events() if e.type == "approval.decided")
    assert decided.data["by"] == "user:fin1" and decided.data["via"] == "cli" and decided.data["latency_s"] >= 0
    with pytest.raises(ApprovalClosedError):
        approvals.approve(approval_id, principal="user:fin2")
    sys_events = [e for e in _config.get_store().events("system") if e.type == "approval.decided"]
    assert sys_events and sys_events[-1].data["shown"] is None


def test_rejection_raises_in_the_agent(app: str) -> None:
    handle = approvalapp.refunds.start("o3", 900.0)
    _serve()
    with pytest.raises(UserError, match="reason"):
        approvals.reject(_pending(handle.id), reason="", principal="user:fin1")
    approvals.reject(_pending(handle.id), reason="fraud suspected", principal="user:fin1")
    _serve()
    with pytest.raises(wflo.RunFailedError) as info:
        handle.result(timeout=5)
    assert info.value.error["type"] == "ApprovalRejected"
    assert "fraud suspected" in info.value.error["message"]


def test_rejection_returned_to_the_model(app: str) -> None:
    handle = approvalapp.llm_tool.start("customers")
    _serve()
    approvals.reject(_pending(handle.id), reason="never in prod", principal="user:someone")
    _serve()
    assert "never in prod" in handle.result(timeout=5)


def test_approve_with_edited_arguments(app: str) -> None:
    handle = approvalapp.refunds.start("o4", 1000.0)
    _serve()
    approvals.approve(_pending(handle.id), principal="user:fin2", args={"amount": 250.0})
    _serve()
    assert handle.result(timeout=5) == "refunded 250.0 on o4"
    req = approvals.list(status="approved", run_id=handle.id)[0]
    assert req.decision_hash != req.action_hash


def test_quorum_of_two_distinct_approvers(app: str) -> None:
    handle = approvalapp.wires.start("acme", 10_000)
    _serve()
    approval_id = _pending(handle.id)
    assert approvals.approve(approval_id, principal="user:fin1").status == "pending"
    with pytest.raises(ApprovalForbiddenError, match="already voted"):
        approvals.approve(approval_id, principal="user:fin1")
    with pytest.raises(ApprovalForbiddenError, match="requester"):
        approvals.approve(approval_id, principal="user:agent-owner")
    assert approvals.approve(approval_id, principal="user:fin2").status == "approved"
    _serve()
    assert handle.result(timeout=5) == "wired 10000 to acme"


def test_inline_approval(app: str) -> None:
    handle = approvalapp.inline.start(512)
    _serve()
    approvals.approve(_pending(handle.id), principal="user:dba", args={"data": {"rows": 10}})
    _serve()
    assert handle.result(timeout=5) == {"approved": True, "data": {"rows": 10}}


def test_timeout_rejects_even_with_no_worker_running(app: str) -> None:
    handle = approvalapp.times_out.start()
    _serve()
    assert handle.status() == "waiting"
    time.sleep(0.4)  # the deadline passes while no worker runs
    _serve()  # "the next worker start"
    with pytest.raises(wflo.RunFailedError, match="no decision before"):
        handle.result(timeout=5)
    req = approvals.list(status="rejected", run_id=handle.id)[0]
    assert req.decided_by == "policy:timeout"
    with pytest.raises(ApprovalClosedError):
        approvals.approve(req.id, principal="user:x")


def test_timeout_escalates(app: str) -> None:
    handle = approvalapp.escalates.start()
    _serve()
    approval_id = _pending(handle.id)
    time.sleep(0.4)
    _serve()
    req = approvals.get(approval_id)
    assert req.status == "pending" and req.approvers == ["user:carol"] and req.escalations == 1
    with pytest.raises(ApprovalForbiddenError):
        approvals.approve(approval_id, principal="user:bob")
    approvals.approve(approval_id, principal="user:carol")
    _serve()
    assert handle.result(timeout=5) == "done after escalation"


def test_twenty_concurrent_decisions_one_outcome(app: str) -> None:
    handle = approvalapp.llm_tool.start("t")
    _serve()
    approval_id = _pending(handle.id)
    results: list[str] = []
    lock = threading.Lock()

    def decide(i: int) -> None:
        try:
            if i % 2:
                approvals.approve(approval_id, principal=f"user:p{i}")
            else:
                approvals.reject(approval_id, reason=f"no {i}", principal=f"user:p{i}")
            with lock:
                results.append("ok")
        except ApprovalClosedError:
            with lock:
                results.append("closed")

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1 and results.count("closed") == 19
    from wflo.approvals import inbox

    assert len(inbox().votes(approval_id)) == 1


def test_unknown_approval_is_clear(app: str) -> None:
    with pytest.raises(ApprovalNotFoundError):
        approvals.approve("does-not-exist", principal="user:fin1")


def test_inline_approval_outside_a_workflow_is_a_user_error(app: str) -> None:
    with pytest.raises(UserError, match=r"inside a @wflo\.workflow"):
        wflo.approval("x")


def test_every_process_exits_then_decision_from_another_process(app: str, tmp_path: Path) -> None:
    """Request → all processes exit → decide from a CLI process → a new worker finishes."""
    effects = tmp_path / "effects.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": app, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]), "APPROVALAPP_EFFECTS": str(effects),
                "WFLO_PRINCIPAL": "user:agent-owner", "WFLO_POLL_INTERVAL": "0.05"})  # fmt: skip

    def cli(*args: str, principal: str = "user:agent-owner") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wflo.cli", *args], env={**env, "WFLO_PRINCIPAL": principal}, cwd=HERE,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    run_id = cli("run", "approvalapp:refunds", "--input", '["o9", 700.0]', "--start").stdout.strip()
    first = cli("worker", "-i", "approvalapp", "--idle-exit", "0.5", "-q")
    assert first.returncode == 0, first.stderr
    assert RunHandle(run_id).status() == "waiting" and not effects.exists()
    listed = cli("approvals", "list", "--mine", principal="user:fin1")
    assert "refund" in listed.stdout
    approval_id = _pending(run_id)
    own = cli("approve", approval_id)
    assert own.returncode == 1 or own.returncode != 0
    assert "requester" in own.stderr and "Traceback" not in own.stderr
    ok = cli("approve", approval_id, principal="user:fin1")
    assert ok.returncode == 0, ok.stderr
    second = cli("worker", "-i", "approvalapp", "--idle-exit", "0.5", "-q")
    assert second.returncode == 0, second.stderr
    assert RunHandle(run_id).result(timeout=5) == "refunded 700.0 on o9"
    assert effects.read_text().splitlines() == ["refund o9 700.0"]
    again = cli("approve", approval_id, principal="user:fin2")
    assert again.returncode != 0 and "already approved" in again.stderr


def test_script_waits_in_process_for_the_decision(app: str, capfd: pytest.CaptureFixture[str]) -> None:
    result: dict[str, object] = {}

    def target() -> None:
        result["value"] = approvalapp.refunds.options(id="inproc").run("o5", 300.0)

    t = threading.Thread(target=target)
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not approvals.list(run_id="inproc"):
        time.sleep(0.05)
    approvals.approve(_pending("inproc"), principal="user:fin1")
    t.join(10)
    assert result["value"] == "refunded 300.0 on o5"
    assert "wflo approve" in capfd.readouterr().err
