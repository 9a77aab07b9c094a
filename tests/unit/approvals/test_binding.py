"""P5 under attack: a decision binds to the exact action that runs (issue 14 finding 1), the
approver sees and stores exactly what will run (issue 15 item 4), on SQLite and PostgreSQL.

The attacks run across processes: the run waits in one, is approved from another, and is
resumed by a worker subprocess whose code computes different arguments for the same call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from wflo import _config
from wflo._errors import ActionMismatchError, UserError
from wflo.approvals import action_hash, approvals, inbox
from wflo.cli import cli
from wflo.engine import RunHandle, Worker

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import approvalapp  # noqa: E402


@pytest.fixture
def app(configured: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:agent-owner")
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=0.05)
    approvals.grant("user:fin1", "finance")
    return configured


def _worker_process(url: str, effects: Path, **env_extra: str) -> None:
    """A worker in a fresh process (its own copy of the code, and of ``APPROVALAPP_AMOUNT``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WFLO_", "APPROVALAPP_"))}
    env.update({"WFLO_DATABASE_URL": url, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
                "APPROVALAPP_EFFECTS": str(effects), "WFLO_PRINCIPAL": "user:agent-owner",
                "WFLO_POLL_INTERVAL": "0.05", **env_extra})  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "worker", "-i", "approvalapp", "--idle-exit", "0.5", "-q"],
        env=env, cwd=HERE, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _effects(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _waiting_and_approved(workflow: object, tmp_path: Path, app: str, **approve: object) -> tuple[RunHandle, str]:
    """Start ``refund("A-17", 250.0)``, let a worker process file the request, approve it."""
    effects = tmp_path / "effects.log"
    handle = workflow.start("A-17", 250.0)  # type: ignore[attr-defined]
    _worker_process(app, effects)
    assert handle.status() == "waiting"
    req = approvals.list(run_id=handle.id)[0]
    assert req.action["kwargs"] == {"order_id": "A-17", "amount": 250.0}
    approvals.approve(req.id, principal="user:fin1", action_hash=req.action_hash, **approve)
    return handle, req.id


def test_approved_action_changed_in_another_process_asks_again(app: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    handle, first_id = _waiting_and_approved(approvalapp.refunds, tmp_path, app)
    # The resuming process computes refund("A-17", 99999.0) for the same call.
    _worker_process(app, effects, APPROVALAPP_AMOUNT="99999")
    assert "refund A-17 99999.0" not in _effects(effects)
    assert _effects(effects) == []
    assert handle.status() == "waiting"
    again = approvals.list(run_id=handle.id)
    assert len(again) == 1 and again[0].id != first_id
    assert again[0].action["kwargs"]["amount"] == 99999.0
    assert again[0].supersedes is not None and again[0].supersedes["action"]["kwargs"]["amount"] == 250.0
    assert "250.0" in again[0].message and "99999.0" in again[0].message  # the approver sees both
    changed = [e for e in handle.events() if e.type == "approval.action_changed"]
    assert len(changed) == 1 and changed[0].data["outcome"] == "asked_again"
    assert changed[0].data["decided_hash"] == approvals.get(first_id).action_hash
    assert changed[0].data["new_approval_id"] == again[0].id
    # Deciding the new action lets it run, once.
    approvals.approve(again[0].id, principal="user:fin1", action_hash=again[0].action_hash)
    _worker_process(app, effects, APPROVALAPP_AMOUNT="99999")
    assert handle.result(timeout=5) == "refunded 99999.0 on A-17"
    assert _effects(effects) == ["refund A-17 99999.0"]
    completed = next(e for e in handle.events() if e.type == "call.completed" and e.data.get("name") == "refund")
    assert completed.data["approval"]["id"] == again[0].id
    code, shown = _cli(app, "approvals", "show", again[0].id, principal="user:fin1")  # last: it reconfigures
    assert code == 0 and "amount=99999.0" in shown
    assert f"replaces   {first_id} (approved) for refund(amount=250.0, order_id='A-17')" in shown


def test_changed_action_can_stop_the_run_instead(app: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    handle, _ = _waiting_and_approved(approvalapp.strict_refunds, tmp_path, app)
    _worker_process(app, effects, APPROVALAPP_AMOUNT="99999")
    assert _effects(effects) == []
    assert handle.status() == "stopped"
    assert handle.record().error is not None and handle.record().error["type"] == "ActionMismatchError"
    changed = [e for e in handle.events() if e.type == "approval.action_changed"]
    assert [e.data["outcome"] for e in changed] == ["stopped"]


def test_the_same_action_runs_in_another_process(app: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    handle, _ = _waiting_and_approved(approvalapp.refunds, tmp_path, app)
    _worker_process(app, effects)
    assert handle.result(timeout=5) == "refunded 250.0 on A-17"
    assert _effects(effects) == ["refund A-17 250.0"]
    assert not [e for e in handle.events() if e.type == "approval.action_changed"]


def test_edited_arguments_stay_the_approved_action_across_processes(app: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    handle, approval_id = _waiting_and_approved(approvalapp.refunds, tmp_path, app, args={"amount": 100})
    req = approvals.get(approval_id)
    assert req.decided_action["kwargs"] == {"order_id": "A-17", "amount": 100.0}  # 100 fitted to `float`
    assert req.decision_hash == action_hash(req.decided_action)
    _worker_process(app, effects)
    assert handle.result(timeout=5) == "refunded 100.0 on A-17"
    assert _effects(effects) == ["refund A-17 100.0"]


def test_an_edited_approval_does_not_cover_a_changed_action(app: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    handle, approval_id = _waiting_and_approved(approvalapp.refunds, tmp_path, app, args={"amount": 100})
    _worker_process(app, effects, APPROVALAPP_AMOUNT="99999")
    assert _effects(effects) == [] and handle.status() == "waiting"
    again = approvals.list(run_id=handle.id)[0]
    assert again.action["kwargs"]["amount"] == 99999.0
    assert again.supersedes is not None and again.supersedes["action"]["kwargs"]["amount"] == 100.0  # what was decided
    assert again.supersedes["id"] == approval_id


def test_a_forged_decision_row_does_not_run(app: str, tmp_path: Path) -> None:
    """Someone with write access to the table swaps the approved action behind the inbox."""
    effects = tmp_path / "effects.log"
    handle, approval_id = _waiting_and_approved(approvalapp.refunds, tmp_path, app, args={"amount": 100})
    forged = {"tool": "refund", "args": [], "kwargs": {"order_id": "A-17", "amount": 99999.0}}
    store = _config.get_store()
    store.write(
        lambda cur: store.execute(
            cur, "UPDATE approvals SET decision_action = ? WHERE id = ?", (json.dumps(forged), approval_id)
        )
    )
    _worker_process(app, effects)
    assert _effects(effects) == []
    assert handle.status() == "failed" and handle.record().error["type"] == "ActionMismatchError"


# ----------------------------------------------------------------- the approver sees what runs


def _cli(url: str, *args: str, principal: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, list(args), env={"WFLO_DATABASE_URL": url, "WFLO_PRINCIPAL": principal, "COLUMNS": "250"}
    )
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def _waiting(workflow: object, *args: object) -> tuple[RunHandle, str]:
    handle = workflow.start(*args)  # type: ignore[attr-defined]
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    assert handle.status() == "waiting"
    return handle, approvals.list(run_id=handle.id)[0].id


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        ('{"amount": "lots"}', "amount='lots' must be a number"),
        ('{"amount": null}', "amount=None must be a number"),
        ('{"amonut": 5}', "refund has no argument 'amonut' (its arguments: amount, order_id)"),
        ('{"amount": true}', "amount=True must be a number"),
        ("[1]", "--args must be a JSON object"),
        ("{}", "must be a non-empty JSON object"),
        ("{bad", "--args is not valid JSON"),
    ],
)
def test_bad_edits_are_refused_before_deciding(app: str, edit: str, error: str) -> None:
    _handle, approval_id = _waiting(approvalapp.refunds, "o7", 250.0)
    code, out = _cli(app, "approve", approval_id, "--args", edit, principal="user:fin1")
    assert code == 2 and error in out, out
    assert len([line for line in out.splitlines() if line.strip()]) == 1, out  # one line, nothing approved
    assert approvals.get(approval_id).status == "pending"


def test_bad_edit_through_the_api(app: str) -> None:
    _, approval_id = _waiting(approvalapp.refunds, "o8", 250.0)
    with pytest.raises(UserError, match="must be a number"):
        approvals.approve(approval_id, principal="user:fin1", args={"amount": "lots"})
    assert inbox().votes(approval_id) == []


def test_the_decided_action_is_shown_stored_and_run(app: str) -> None:
    handle, approval_id = _waiting(approvalapp.refunds, "A-1017", 250.0)
    code, out = _cli(app, "approve", approval_id, "--args", '{"amount": 120}', principal="user:fin1")
    assert code == 0, out
    assert "refund(amount=120.0, order_id='A-1017')" in out.splitlines()[0]  # shown before the decision
    assert "amount 250.0 → 120.0" in out
    req = approvals.get(approval_id)
    assert req.decided_action["kwargs"]["amount"] == 120.0 and req.decision_hash == action_hash(req.decided_action)
    code, shown = _cli(app, "approvals", "show", approval_id, principal="user:fin1")
    assert "approved   refund(amount=120.0, order_id='A-1017')" in shown and req.decision_hash in shown
    code, listed = _cli(app, "approvals", "list", "--status", "approved", principal="user:fin1")
    assert "amount=120.0" in listed and "250.0" not in listed
    code, as_json = _cli(app, "approvals", "show", approval_id, "--json", principal="user:fin1")
    assert json.loads(as_json)["decided_action"]["kwargs"]["amount"] == 120.0
    system = [e for e in _config.get_store().events("system") if e.type == "approval.decided"]
    assert "120.0" in system[-1].data["shown"] and system[-1].data["action_hash"] == req.decision_hash
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    # A fresh handle: the CLI reconfigured wflo and closed the store `handle` was bound to.
    assert RunHandle(handle.id).result(timeout=5) == "refunded 120.0 on A-1017"


def test_code_reverting_to_the_first_action_reopens_its_request(app: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    store = _config.get_store()
    handle = approvalapp.refunds.start("A-17", 250.0)
    _worker_process(app, effects)
    first = approvals.list(run_id=handle.id)[0]
    store.set_wake(handle.id, "1970-01-01T00:00:00")  # an operator resumes it before any decision
    _worker_process(app, effects, APPROVALAPP_AMOUNT="99999")
    second = approvals.list(run_id=handle.id)
    assert [r.action["kwargs"]["amount"] for r in second] == [99999.0]
    assert approvals.get(first.id).status == "superseded"
    store.set_wake(handle.id, "1970-01-01T00:00:00")
    _worker_process(app, effects)  # back to 250.0: the first request is the pending one again
    assert [r.id for r in approvals.list(run_id=handle.id)] == [first.id]
    assert approvals.get(second[0].id).status == "superseded"
    with pytest.raises(ActionMismatchError):
        approvals.approve(first.id, principal="user:fin1", action_hash=second[0].action_hash)
    approvals.approve(first.id, principal="user:fin1", action_hash=first.action_hash)
    _worker_process(app, effects)
    assert handle.result(timeout=5) == "refunded 250.0 on A-17"
    assert _effects(effects) == ["refund A-17 250.0"]
    outcomes = [e.data["outcome"] for e in handle.events() if e.type == "approval.action_changed"]
    assert outcomes == ["asked_again", "asked_again"]


def test_an_approved_action_runs_when_the_code_returns_to_it(app: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    store = _config.get_store()
    handle, _first_id = _waiting_and_approved(approvalapp.refunds, tmp_path, app)
    _worker_process(app, effects, APPROVALAPP_AMOUNT="99999")  # asks again for 99999.0
    pending = approvals.list(run_id=handle.id)[0]
    store.set_wake(handle.id, "1970-01-01T00:00:00")
    _worker_process(app, effects)  # the code computes 250.0 again: that was approved
    assert handle.result(timeout=5) == "refunded 250.0 on A-17"
    assert _effects(effects) == ["refund A-17 250.0"]
    assert approvals.get(pending.id).status == "superseded"
