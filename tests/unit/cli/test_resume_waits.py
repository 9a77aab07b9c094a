"""`wflo runs resume` on a run that reaches an approval: no traceback; it waits (or, with
--no-wait, prints how to decide and exits 11), as `wflo run` does."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import wflo
from wflo import _config
from wflo.cli import cli

HERE = Path(__file__).parent


def test_resume_reaching_an_approval_waits_or_says_how_to_decide(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    env = {"WFLO_DATABASE_URL": store_url, "WFLO_PRINCIPAL": "user:agent-owner", "WFLO_POLL_INTERVAL": "0.05"}
    runner = CliRunner()
    started = runner.invoke(cli, ["run", "cliapp:refund_flow", "--input", '["A-1", 250.0]', "--start"], env=env)
    assert started.exit_code == 0, started.output
    run_id = started.stdout.strip()

    no_wait = runner.invoke(cli, ["runs", "resume", run_id, "--import", "cliapp", "--no-wait"], env=env)
    assert no_wait.exception is None or isinstance(no_wait.exception, SystemExit), no_wait.exception
    assert no_wait.exit_code == 11, no_wait.output
    assert f"run {run_id} is waiting" in no_wait.stderr and "decide with `wflo approve " in no_wait.stderr
    wflo.configure(database=store_url)
    assert _config.get_store().get_run(run_id).status == "waiting"
    request = wflo.approvals.list(run_id=run_id)[0]

    def decide() -> None:  # a person in finance decides while the CLI waits
        time.sleep(0.5)
        wflo.approvals.grant("user:finance", "finance")
        wflo.approvals.approve(request.id, principal="user:finance", action_hash=request.action_hash, via="test")

    decider = threading.Thread(target=decide)
    decider.start()
    waited = runner.invoke(cli, ["runs", "resume", run_id, "--import", "cliapp"], env=env)
    decider.join()
    assert waited.exception is None or isinstance(waited.exception, SystemExit), waited.exception
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.stdout.splitlines()[-1]) == "refunded 250.00 on A-1"
