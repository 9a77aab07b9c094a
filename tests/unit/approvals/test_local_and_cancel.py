"""A developer alone at a laptop (issue 15 item 5), cancelled runs (issue 15 item 8) and
concurrent role grants (issue 14 finding 9), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wflo import _config
from wflo._errors import ApprovalClosedError, ApprovalForbiddenError
from wflo.approvals import approvals, inbox
from wflo.engine import Worker

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import approvalapp  # noqa: E402

REQUESTER = "user:agent-owner"


@pytest.fixture
def app(configured: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("WFLO_PRINCIPAL", REQUESTER)
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=0.05)
    approvals.grant("user:fin1", "finance")
    return configured


def _wflo(url: str, *args: str, principal: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    """The command exactly as a user types it, in its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": url, "WFLO_PRINCIPAL": principal, "PYTHONPATH": os.pathsep.join(sys.path),
                **env_extra})  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "wflo.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _script_waits(run_id: str, result: dict[str, object]) -> threading.Thread:
    """``refunds.run(...)`` in a script: it prints how to decide, then waits in-process."""

    def target() -> None:
        result["value"] = approvalapp.refunds.options(id=run_id).run("o5", 300.0)

    t = threading.Thread(target=target, daemon=True)  # a failed test must not hang the process
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not approvals.list(run_id=run_id):
        time.sleep(0.05)
    return t


def _hint_commands(err: str) -> list[str]:
    return re.findall(r"`(wflo approve [^`]*)`", err)


def _printed_hint(capfd: pytest.CaptureFixture[str]) -> str:
    """What the waiting script printed on stderr, once it printed how to decide."""
    err = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        err += capfd.readouterr().err
        if "wflo approve" in err and err.endswith("\n"):
            return err
        time.sleep(0.05)
    return err


def test_the_printed_hints_work_for_a_developer_alone(app: str, capfd: pytest.CaptureFixture[str]) -> None:
    result: dict[str, object] = {}
    t = _script_waits("alone", result)
    err = _printed_hint(capfd)
    commands = _hint_commands(err)
    approval_id = approvals.list(run_id="alone")[0].id
    assert commands == [f"wflo approve {approval_id}", f"wflo approve {approval_id} --as-self-local"], err
    assert "role:finance" in err and f"not the requester {REQUESTER}" in err
    # The plain command is for an approver; run by the developer (the requester) it is refused…
    own = _wflo(app, *commands[0].split()[1:], principal=REQUESTER)
    assert own.returncode != 0 and "requester" in own.stderr and "Traceback" not in own.stderr
    # …and the self-approval command works, as printed.
    local = _wflo(app, *commands[1].split()[1:], principal=REQUESTER)
    assert local.returncode == 0, local.stderr
    assert "approved as a local self-approval" in local.stdout
    t.join(15)
    assert result["value"] == "refunded 300.0 on o5"
    req = approvals.get(approval_id)
    assert req.status == "approved" and req.decided_by == REQUESTER and req.via == "local"
    decided = [e for e in _config.get_store().events("system") if e.type == "approval.decided"][-1]
    assert decided.data["self_local"] is True and decided.data["via"] == "local" and decided.data["os_user"]
    assert decided.data["by"] == REQUESTER
    assert [v["via"] for v in inbox().votes(approval_id)] == ["local"]


def test_the_approver_hint_works(app: str, capfd: pytest.CaptureFixture[str]) -> None:
    result: dict[str, object] = {}
    t = _script_waits("approver", result)
    command = _hint_commands(_printed_hint(capfd))[0]
    ok = _wflo(app, *command.split()[1:], principal="user:fin1")
    assert ok.returncode == 0, ok.stderr
    t.join(15)
    assert result["value"] == "refunded 300.0 on o5"


def test_self_approval_is_refused_where_authentication_is_required(
    app: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WFLO_REQUIRE_AUTH", "1")
    _config.configure(database=app, lease_seconds=5.0, poll_interval=0.05)
    handle = approvalapp.refunds.start("o6", 500.0)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    waiting = next(e for e in handle.events() if e.type == "run.waiting")
    assert "--as-self-local" not in waiting.data["wait"]["hint"]  # the hint does not offer it
    approval_id = approvals.list(run_id=handle.id)[0].id
    refused = _wflo(app, "approve", approval_id, "--as-self-local", principal=REQUESTER, WFLO_REQUIRE_AUTH="1")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "require_auth" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    with pytest.raises(ApprovalForbiddenError, match="require_auth"):
        approvals.approve(approval_id, principal=REQUESTER, self_local=True)
    assert approvals.get(approval_id).status == "pending" and inbox().votes(approval_id) == []


def test_self_approval_is_only_for_your_own_requests(app: str) -> None:
    handle = approvalapp.refunds.start("o7", 500.0)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    approval_id = approvals.list(run_id=handle.id)[0].id
    with pytest.raises(ApprovalForbiddenError, match="only your own requests"):
        approvals.approve(approval_id, principal="user:someone-else", self_local=True)
    assert approvals.get(approval_id).status == "pending"


def test_self_approval_settles_a_quorum_request_alone(app: str) -> None:
    handle = approvalapp.wires.start("acme", 10)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    approval_id = approvals.list(run_id=handle.id)[0].id
    assert approvals.approve(approval_id, principal=REQUESTER, self_local=True).status == "approved"
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    assert handle.result(timeout=5) == "wired 10 to acme"


# ----------------------------------------------------------------- cancelled runs


def test_cancelling_a_waiting_run_closes_its_approval(app: str) -> None:
    handle = approvalapp.refunds.start("o8", 500.0)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    approval_id = approvals.list(run_id=handle.id)[0].id
    assert handle.cancel() == "cancelled"
    req = approvals.get(approval_id)
    assert req.status == "cancelled" and "cancelled" in (req.reason or "")
    closed = [e for e in _config.get_store().events("system") if e.type == "approval.cancelled"]
    assert [e.data["approval_id"] for e in closed] == [approval_id] and closed[0].data["by"] == REQUESTER
    late = _wflo(app, "approve", approval_id, principal="user:fin1")
    assert late.returncode != 0 and "already cancelled" in late.stderr and "Traceback" not in late.stderr
    assert "approved" not in late.stdout.replace("approving", "")
    assert approvals.list(run_id=handle.id) == []  # nothing pending is left for a dead run


def test_cancel_from_the_cli_closes_the_approval(app: str) -> None:
    handle = approvalapp.refunds.start("o9", 500.0)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    approval_id = approvals.list(run_id=handle.id)[0].id
    done = _wflo(app, "runs", "cancel", handle.id, principal=REQUESTER)
    assert done.returncode == 0, done.stderr
    assert approvals.get(approval_id).status == "cancelled"


def test_deciding_for_a_run_cancelled_behind_the_inbox_is_refused(app: str) -> None:
    """The run was cancelled by a path that did not close its request (older code, a crash
    between the two): the decision is refused, and the request closed then, on the record."""
    handle = approvalapp.refunds.start("o10", 500.0)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    approval_id = approvals.list(run_id=handle.id)[0].id
    _config.get_store().request_cancel(handle.id)
    assert approvals.get(approval_id).status == "pending"
    with pytest.raises(ApprovalClosedError, match="cancelled"):
        approvals.approve(approval_id, principal="user:fin1")
    assert approvals.get(approval_id).status == "cancelled" and inbox().votes(approval_id) == []
    assert [e.data["approval_id"] for e in _config.get_store().events("system") if e.type == "approval.cancelled"] == [
        approval_id
    ]


# ----------------------------------------------------------------- concurrent grants

_GRANT = """
import os, sys, time, wflo
from wflo.approvals import approvals
approvals.list()  # open the store before the start signal
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
for role in sys.argv[2:]:
    approvals.grant("user:many", role)
"""


def test_concurrent_grants_lose_no_role(app: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    thread_roles = [[f"t{t}-{i}" for i in range(10)] for t in range(8)]
    proc_roles = [[f"p{p}-{i}" for i in range(15)] for p in range(3)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    # Every granter is the store's one admin (granting needs admin since issue 16).
    admin = _config.settings().principal
    env.update({"WFLO_DATABASE_URL": app, "WFLO_PRINCIPAL": admin, "PYTHONPATH": os.pathsep.join(sys.path)})
    procs = [subprocess.Popen([sys.executable, "-c", _GRANT, str(go), *rs], env=env) for rs in proc_roles]
    barrier = threading.Barrier(len(thread_roles) + 1)

    def grant(roles: list[str]) -> None:
        barrier.wait()
        for role in roles:
            approvals.grant("user:many", role)

    threads = [threading.Thread(target=grant, args=(rs,)) for rs in thread_roles]
    for t in threads:
        t.start()
    time.sleep(1.5)  # the processes have imported wflo and opened the store
    go.touch()
    barrier.wait()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(60) == 0
    expected = {r for rs in thread_roles + proc_roles for r in rs}
    assert inbox().roles_of("user:many") == expected
    granted = [e for e in _config.get_store().events("system") if e.type == "principal.granted"]
    assert {e.data["role"] for e in granted if e.data["principal"] == "user:many"} == expected
