"""What the CLI prints, in-process (click's CliRunner: no interpreter start per command)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import wflo
from wflo.cli import cli
from wflo.cost import _tables
from wflo.store import Head, NewEvent, open_store

HERE = Path(__file__).parent


def invoke(*args: str, db: str, principal: str = "user:ops", create: bool = True) -> Result:
    if create:  # reading commands refuse a missing store; these tests start from an empty one
        open_store(db).close()
    runner = CliRunner()
    return runner.invoke(cli, list(args), env={"WFLO_DATABASE_URL": db, "WFLO_PRINCIPAL": principal})


def llm_run(db: str, run_id: str, *, at: str, cost: str = "0.0100", workflow: str = "wf") -> None:
    with open_store(db) as store:
        run, _ = store.create_run(run_id=run_id, workflow=workflow, input={}, owner="w1")
        head = Head(run.last_seq, run.last_hash)
        call = {"call": "1", "kind": "llm", "name": "gpt-4o-mini", "cost_usd": cost,
                "usage": {"input_tokens": 10, "output_tokens": 5}}  # fmt: skip

        def book(cur: Any) -> None:  # the spend book's row the ledger writes with a charged call's event
            _tables.book(store, cur, run_id, "gpt-4o-mini", calls=1, usd=Decimal(cost), estimated=Decimal(0),
                         input_tokens=10, output_tokens=5, hour=at[:13] + ":00")  # fmt: skip

        head = store.append(run_id, head, [NewEvent("call.completed", call, at)], owner="w1", ops=[book])
        store.append(run_id, head, [NewEvent("run.completed", {"output": 1}, at)], owner="w1", status="succeeded",
                     output=1, finish=True)  # fmt: skip


def test_costs_since_garbage_is_an_error(sqlite_url: str) -> None:
    result = invoke("costs", "--since", "garbage", db=sqlite_url)
    assert result.exit_code == 2, result.output
    assert "invalid --since 'garbage'" in result.stderr and "Traceback" not in result.output


def test_prune_wording_costs_note_and_unsigned_prune_cause(sqlite_url: str, tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    llm_run(sqlite_url, "old", at="2020-01-01T00:00:00.000000Z")
    llm_run(sqlite_url, "new", at="2026-01-01T00:00:00.000000Z")
    before = invoke("costs", "--json", db=sqlite_url)
    assert json.loads(before.stdout)[0]["calls"] == 2
    pruned = invoke("audit", "prune", "--before", "2021-01-01", "--yes", db=sqlite_url)
    assert pruned.exit_code == 0, pruned.output
    assert "pruned 1 run (4 events)" in pruned.stdout  # not "1 runs"
    after = invoke("costs", "--json", db=sqlite_url)
    assert after.exit_code == 0
    # A pruned run's spend stays in the costs: money was spent (the spend book is not pruned).
    assert json.loads(after.stdout)[0]["calls"] == 2 and "pruned" not in after.stderr
    # The prune record is unsigned: with a pinned key, verify says that is why the chain is broken.
    key = invoke("audit", "keygen", "--out", str(tmp_path / "k.pem"), db=sqlite_url)
    (tmp_path / "k.pub").write_text(key.stdout)
    verify = invoke("audit", "verify", "--public-key", str(tmp_path / "k.pub"), db=sqlite_url)
    assert verify.exit_code == 10
    assert "BROKEN old: at seq 1 (unsigned-prune)" in verify.stderr and "BROKEN old: BROKEN" not in verify.stderr
    assert "not signed by the pinned key" in verify.stderr


def test_piped_tables_are_not_cut_at_80_columns(sqlite_url: str) -> None:
    name = "a.very.long.workflow.name." + "x" * 90
    llm_run(sqlite_url, "wide", at="2026-01-01T00:00:00.000000Z", workflow=name)
    out = invoke("runs", "list", db=sqlite_url).stdout
    assert name in out
    assert name in invoke("costs", "--by", "workflow", db=sqlite_url).stdout


def test_budgets_show_a_runs_own_budget(sqlite_url: str) -> None:
    wflo.configure(database=sqlite_url)

    @wflo.workflow(name="budgeted", budget=wflo.Budget(usd="0.50"))
    def budgeted() -> int:
        return 1

    budgeted.options(id="ticket-1").run()
    shown = invoke("budgets", "show", "run:ticket-1", db=sqlite_url)
    if shown.exit_code != 0:
        pytest.fail(shown.output)
    assert "run:ticket-1: limit $0.5 " in shown.stdout and "the run's own budget" in shown.stdout
    missing = invoke("budgets", "show", "run:nope", db=sqlite_url)
    assert missing.exit_code == 2 and "no budget is set for 'run:nope'" in missing.stderr


def test_ctrl_c_on_run_prints_how_to_resume(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    result = invoke("run", "cliapp:interrupted", "--id", "int-1", db=sqlite_url)
    assert result.exit_code == 130
    assert "wflo runs resume int-1 --import cliapp" in result.stderr
    with open_store(sqlite_url) as store:
        assert store.get_run("int-1").status == "running"  # kept, not failed


@pytest.mark.parametrize(
    ("inputs", "text"),
    [
        ("{}", "missing a required argument: 'name'"),
        ('{"name": "a", "colour": "red"}', "got an unexpected keyword argument 'colour'"),
        ('["a", "b", "c"]', "too many positional arguments"),
    ],
)
def test_run_with_wrong_inputs_is_one_line_and_creates_no_run(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, inputs: str, text: str
) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    result = invoke("run", "cliapp:greet", "--input", inputs, db=sqlite_url)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: workflow 'greet' cannot take these inputs") and text in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert json.loads(invoke("runs", "list", "--json", db=sqlite_url).stdout) == []


@pytest.mark.parametrize(
    ("var", "value", "accepted"),
    [
        ("WFLO_LEASE_SECONDS", "abc", "a number > 0"),
        ("WFLO_CONTENT", "everything", "full, redacted, hash_only"),
        ("WFLO_OTEL", "maybe", "1/0, true/false, yes/no, on/off"),
        ("WFLO_AUTO_MIGRATE", "2", "1/0, true/false"),
        ("WFLO_POLL_INTERVAL", "-1", "a number > 0"),
    ],
)
def test_every_setting_is_checked_at_start(sqlite_url: str, var: str, value: str, accepted: str) -> None:
    result = CliRunner().invoke(cli, ["runs", "list"], env={"WFLO_DATABASE_URL": sqlite_url, var: value})
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"error: {var}={value!r} is not a valid") and accepted in line
    assert len(line.splitlines()) == 1 and "Traceback" not in result.output


def test_error_text_is_not_read_as_markup(sqlite_url: str) -> None:
    result = invoke("runs", "show", "wflo[otel]", db=sqlite_url)
    assert result.exit_code == 3 and "no run with id 'wflo[otel]'" in result.stderr


def test_metrics_port_without_the_extra_names_it(sqlite_url: str) -> None:
    """Without prometheus_client/opentelemetry (as on a core install): the message names wflo[otel]."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('prometheus_client', 'opentelemetry'):\n"
        "    sys.modules[name] = None\n"
        "from wflo.cli import main\n"
        "sys.argv = ['wflo', 'worker', '-i', 'cliapp', '--metrics-port', '9', '--idle-exit', '0']\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_DATABASE_URL=sqlite_url, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pip install 'wflo[otel]'" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [("runs", "list"), ("runs", "show", "r1"), ("costs",), ("audit", "verify"), ("runs", "cancel", "r1")],
)
def test_reading_commands_create_no_store(tmp_path: Path, args: tuple[str, ...]) -> None:
    """A mistyped store path is refused in one line; no directory or database appears there."""
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    result = invoke(*args, db=f"sqlite:///{missing}", create=False)
    assert result.exit_code == 4, result.output
    assert "no wflo store at" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "no").exists()
