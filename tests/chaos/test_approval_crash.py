"""P3 and P5 across a crash: a run killed (SIGKILL) right after its approval was decided.

The script waiting for the decision wakes and runs the approved tool; it is killed inside it,
resumed by the script again and killed at random moments (starting, claiming, inside the tool,
recording it), and finished by a worker process. The approved action must run
with the approver's edited arguments only, be journaled once, never be asked about again, and
run more than once only when a kill landed inside it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _killloop import chaos_env

import wflo
from wflo import _config
from wflo.audit import verify_chain

HERE = Path(__file__).parent
APP = HERE / "approvalapp.py"


def _kill(proc: subprocess.Popen[str]) -> bool:
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGKILL), err
    return killed


@pytest.mark.slow
def test_sigkill_after_the_approval_is_decided_runs_the_approved_action_only(store_url: str, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("WFLO_CHAOS_SEED", "5150")))
    effects = tmp_path / "effects.log"
    env = {**chaos_env(store_url), "WFLO_PRINCIPAL": "user:agent", "APPROVALAPP_EFFECTS": str(effects)}
    _config.configure(database=store_url)
    store = _config.get_store()
    wflo.approvals.grant("user:fin", "finance")
    argv = [sys.executable, str(APP), "pay-1", str(effects)]

    def script() -> subprocess.Popen[str]:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    waiting = script()
    deadline = time.monotonic() + 60
    while not [r for r in store.list_runs(workflow="approvalapp.pay") if r.status == "waiting"]:
        assert waiting.poll() is None, waiting.communicate()[1]
        assert time.monotonic() < deadline, "the run never reached its approval"
        time.sleep(0.02)
    (request,) = wflo.approvals.list(run_id="pay-1")
    wflo.approvals.approve(request.id, principal="user:fin", action_hash=request.action_hash, args={"amount": 100.0})
    # The waiting script wakes on the decision and runs the approved tool (>= 50 ms): killed in it.
    while not effects.exists() and waiting.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.04))
    assert _kill(waiting), "the woken script finished before the kill"
    kills = 1
    for _ in range(2):  # resumed by the script, killed again (start-up takes ~0.5 s)
        proc = script()
        time.sleep(rng.uniform(0.3, 1.2))
        kills += _kill(proc)
    worker = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "worker", "-i", "approvalapp", "--idle-exit", "3", "-q"],
        env=env, cwd=HERE, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    assert kills >= 2, "the kills all landed after the run finished"

    run = store.get_run("pay-1")
    assert run.status == "succeeded" and run.output == "sent 100.0 for A-17 (receipt)", run
    lines = [line.split() for line in effects.read_text().splitlines()]
    ran = [(kind, order, amount) for kind, order, amount, _ in lines if kind in ("start", "end")]
    assert {(order, amount) for _, order, amount in ran} == {("A-17", "100.0")}, ran  # only the approved action
    starts, ends = (sum(r[0] == kind for r in ran) for kind in ("start", "end"))
    assert 2 <= starts <= 1 + kills and ends >= 1, ran  # run again after the kill inside it
    assert sum(line[0] == "receipt" for line in lines) >= 1

    events = store.events("pay-1")
    done = [e.data for e in events if e.type == "call.completed" and e.data["name"] == "approvalapp_transfer"]
    assert len(done) == 1 and done[0]["approval"]["id"] == request.id, done
    asked = [e for e in events if e.type == "approval.requested"]
    assert len(asked) == 1 and [r.id for r in wflo.approvals.list(run_id="pay-1", status=None)] == [request.id]
    assert not [e for e in events if e.type == "approval.action_changed"]
    assert verify_chain(store, "pay-1").ok
