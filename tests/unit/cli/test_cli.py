"""The `wflo` command as users run it: exit codes, one-line errors.

In-process through click's CliRunner: starting an interpreter per command added minutes to
the suite and nothing these tests check (test_cli_walk.py runs the real entry point once).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from wflo import _config
from wflo.cli import cli
from wflo.store import open_store

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _cliapp_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(HERE))
    yield
    _config.reset()


@dataclass
class Proc:
    returncode: int
    stdout: str
    stderr: str


def wflo(*args: str, db: str, check: bool = False, create: bool = True) -> Proc:
    if create:
        open_store(db).close()  # reading commands refuse a missing store; these tests start from an empty one
    result = CliRunner().invoke(cli, list(args), env={"WFLO_DATABASE_URL": db})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback in a terminal: the test fails with it
    proc = Proc(result.exit_code, result.stdout, result.stderr)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc: Proc, code: int, text: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert text in proc.stderr
    assert proc.stderr.strip().startswith("error:")


def test_run_list_show(store_url: str) -> None:
    out = wflo("run", "cliapp:greet", "--input", '{"name": "otter"}', "--id", "g1", db=store_url, check=True)
    assert json.loads(out.stdout) == "HELLO OTTER!"
    listed = json.loads(wflo("runs", "list", "--json", db=store_url, check=True).stdout)
    assert [r["id"] for r in listed] == ["g1"] and listed[0]["status"] == "succeeded"
    shown = json.loads(wflo("runs", "show", "g1", "--json", db=store_url, check=True).stdout)
    assert [e["type"] for e in shown["events"]] == ["run.created", "run.started", "call.completed", "run.completed"]
    text = wflo("runs", "show", "g1", db=store_url, check=True).stdout
    assert "succeeded" in text and "shout" in text


def test_start_worker_and_cancel(store_url: str) -> None:
    run_id = wflo("run", "cliapp:greet", "--input", '["worker"]', "--start", db=store_url, check=True).stdout.strip()
    other = wflo("run", "cliapp:greet", "--input", '["never"]', "--start", db=store_url, check=True).stdout.strip()
    assert "cancelled" in wflo("runs", "cancel", other, db=store_url, check=True).stdout
    wflo("worker", "-i", "cliapp", "--idle-exit", "0.5", "-q", db=store_url, check=True)
    shown = json.loads(wflo("runs", "show", run_id, "--json", db=store_url, check=True).stdout)
    assert shown["status"] == "succeeded" and shown["output"] == "HELLO WORKER!"
    assert json.loads(wflo("runs", "show", other, "--json", db=store_url, check=True).stdout)["status"] == "cancelled"
    assert_one_line_error(wflo("runs", "cancel", other, db=store_url), 2, "already ended")


def test_failed_workflow_exit_status(store_url: str) -> None:
    proc = wflo("run", "cliapp:explode", "--id", "boom-1", db=store_url)
    assert_one_line_error(proc, 6, "run boom-1 failed: ValueError: kaboom")
    listed = json.loads(wflo("runs", "list", "--status", "failed", "--json", db=store_url, check=True).stdout)
    assert listed[0]["error"]["message"] == "kaboom"


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (("runs", "show", "no-such-run"), 3, "no run with id"),
        (("runs", "resume", "no-such-run"), 3, "no run with id"),
        (("runs", "cancel", "no-such-run"), 3, "no run with id"),
        (("run", "cliapp:greet", "--input", "{bad json"), 2, "not valid JSON"),
        (("run", "cliapp-greet"), 2, "is not MODULE:FUNCTION"),
        (("run", "nosuchmodule:x"), 2, "cannot import"),
        (("run", "cliapp:shout"), 2, "is not a @wflo.workflow"),
        (("worker", "-i", "nosuchmodule"), 2, "cannot import"),
    ],
)
def test_user_mistakes_get_one_line_errors(sqlite_url: str, args: tuple[str, ...], code: int, text: str) -> None:
    assert_one_line_error(wflo(*args, db=sqlite_url), code, text)


def test_unreachable_database_and_schema_checks(tmp_path: Path) -> None:
    assert_one_line_error(
        wflo("runs", "list", db="postgresql://x:pw@127.0.0.1:1/none", create=False), 4, "cannot open the wflo store"
    )
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    # A check looks, it does not create: no file yet is "no store here" (4), not schema version 0.
    assert_one_line_error(wflo("db", "check", db=fresh, create=False), 4, "no wflo store")
    assert not (tmp_path / "fresh.db").exists()
    assert (
        "applied m001_initial, m002_budgets, m003_approvals"
        in wflo("db", "migrate", db=fresh, check=True, create=False).stdout
    )
    assert "ok:" in wflo("db", "check", db=fresh, check=True, create=False).stdout
    assert_one_line_error(wflo("runs", "list", db="mysql://nope", create=False), 2, "unsupported database URL")


def test_budgets_and_costs_commands(store_url: str) -> None:
    out = wflo("budgets", "set", "tenant:acme", "--usd", "20", "--period", "day", db=store_url, check=True)
    assert "tenant:acme: $20 per day" in out.stdout
    listed = json.loads(wflo("budgets", "list", "--json", db=store_url, check=True).stdout)
    assert listed[0]["scope"] == "tenant:acme" and listed[0]["limit_usd"] == "20" and listed[0]["spent_usd"] == "0"
    assert "remaining $20" in wflo("budgets", "show", "tenant:acme", db=store_url, check=True).stdout
    assert_one_line_error(wflo("budgets", "set", "acme", "--usd", "1", db=store_url), 2, "scope")
    assert_one_line_error(wflo("budgets", "set", "tenant:x", "--usd", "-3", db=store_url), 2, "non-negative")
    assert_one_line_error(wflo("budgets", "show", "tenant:none", db=store_url), 2, "no budget is set")
    assert json.loads(wflo("costs", "--json", db=store_url, check=True).stdout) == []
    system = json.loads(wflo("audit", "verify", "--json", db=store_url, check=True).stdout)
    assert system["ok"] is True and system["events"] >= 1
