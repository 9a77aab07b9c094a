"""What a careless or hostile user gives the `wflo` command: stored text that looks like rich
markup, read-only commands in a directory with no store, ambiguous id prefixes, values out of
range. Each answer is the text as it is, or one line and an exit status, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from wflo import _config
from wflo.cli import cli

HERE = Path(__file__).parent
MARKUP = "bad [/] close, [bold]hidden[/bold] and :x:"
"""A value as an agent or a user may write it: rich would raise on ``[/]``, swallow
``[bold]`` and turn ``:x:`` into an emoji."""


@pytest.fixture(autouse=True)
def _cliapp_importable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.chdir(tmp_path)
    yield
    _config.reset()


def invoke(*args: str, db: str, principal: str = "user:ops") -> Result:
    result = CliRunner().invoke(cli, list(args), env={"WFLO_DATABASE_URL": db, "WFLO_PRINCIPAL": principal})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("".join(traceback.format_exception(result.exception)))  # a traceback in a terminal
    _config.reset()
    return result


def test_stored_text_is_shown_as_it_is_not_as_markup(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "markupapp.py").write_text(
        "import wflo\n\n\n@wflo.workflow(name='markup_flow')\ndef markup_flow(msg: str) -> None:\n"
        "    raise ValueError(msg)\n"
    )
    failed = invoke("run", "markupapp:markup_flow", "--input", json.dumps({"msg": MARKUP}), db=sqlite_url)
    assert failed.exit_code == 6, failed.output
    listed = invoke("runs", "list", db=sqlite_url)
    assert listed.exit_code == 0 and MARKUP in listed.stdout
    run_id = json.loads(invoke("runs", "list", "--json", db=sqlite_url).stdout)[0]["id"]
    shown = invoke("runs", "show", run_id, db=sqlite_url)
    assert shown.exit_code == 0
    assert f"error     ValueError: {MARKUP}" in shown.stdout and f'"msg": "{MARKUP}"' in shown.stdout

    for principal in ("user:x", "user:[/]b[bold]"):  # "user:x:" (before a colon) is rich's ❌ emoji code
        granted = invoke("grant", principal, "approver", db=sqlite_url)
        assert granted.exit_code == 0 and granted.stdout == f"{principal}: roles approver\n"
    grants = invoke("grants", "list", db=sqlite_url)
    assert grants.exit_code == 0 and "user:[/]b[bold]" in grants.stdout
    who = invoke("whoami", db=sqlite_url, principal="user:x")
    assert who.stdout.startswith("user:x via local")

    # An agent's tool argument, shown to the approver in the inbox: exactly what will run.
    env = ("--input", json.dumps(["[white on white]A-1", 250.0]))
    started = invoke("run", "cliapp:refund_flow", *env, "--start", db=sqlite_url)
    waiting = invoke("runs", "resume", started.stdout.strip(), "--import", "cliapp", "--no-wait", db=sqlite_url)
    assert waiting.exit_code == 11, waiting.output
    inbox = invoke("approvals", "list", db=sqlite_url)
    assert inbox.exit_code == 0 and "order_id='[white on white]A-1'" in inbox.stdout


READ_ONLY = [
    ["approvals", "list"],
    ["approvals", "show", "0123abcd"],
    ["budgets", "list"],
    ["budgets", "show", "global"],
    ["db", "check"],
    ["grants", "list"],
    ["tokens", "list"],
    ["tools", "grants"],
    ["tools", "trusted"],
    ["whoami"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=[" ".join(a) for a in READ_ONLY])
def test_a_read_only_command_where_there_is_no_store_says_so_and_creates_none(args: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "wflo.db"
    result = invoke(*args, db=f"sqlite:///{missing}")
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith(f"error: no wflo store at {missing}") and "wflo db migrate" in result.stderr
    assert not missing.exists() and not missing.parent.exists()


def test_an_id_prefix_of_several_runs_or_approvals_says_so(sqlite_url: str) -> None:
    for run_id in ("abcd-0001", "abcd-0002"):
        invoke("run", "cliapp:greet", "--input", '{"name": "x"}', "--id", run_id, db=sqlite_url)
    shown = invoke("runs", "show", "abcd", db=sqlite_url)
    assert shown.exit_code == 3
    assert shown.stderr.strip() == "error: 'abcd' is the start of more than one run id: give more of it"
    assert invoke("runs", "show", "abcd-0002", db=sqlite_url).exit_code == 0
    assert invoke("runs", "show", "zzzz", db=sqlite_url).stderr.strip() == "error: no run with id 'zzzz'"

    # Approval ids are hashes of (run, call): these two runs' first requests both start "e148".
    for run_id in ("amb-82", "amb-156"):
        started = invoke(
            "run", "cliapp:refund_flow", "--input", '["A-1", 250.0]', "--start", "--id", run_id, db=sqlite_url
        )
        invoke("runs", "resume", started.stdout.strip(), "--import", "cliapp", "--no-wait", db=sqlite_url)
    ids = [r["id"] for r in json.loads(invoke("approvals", "list", "--json", db=sqlite_url).stdout)]
    assert len(ids) == 2 and all(i.startswith("e148") for i in ids), ids
    ambiguous = invoke("approvals", "show", "e148", db=sqlite_url)
    assert ambiguous.exit_code == 3
    assert (
        ambiguous.stderr.strip() == "error: 'e148' is the start of more than one approval request id: give more of it"
    )
    assert invoke("approvals", "show", ids[0][:8], db=sqlite_url).exit_code == 0


@pytest.mark.parametrize("port", ["-1", "0", "65536", "99999"])
@pytest.mark.parametrize("command", [["server"], ["mcp", "serve", "--workflow", "x", "--transport", "http"]])
def test_a_port_out_of_range_is_a_usage_error(command: list[str], port: str, sqlite_url: str) -> None:
    result = invoke(*command, "--port", port, db=sqlite_url)
    assert result.exit_code == 2 and "Invalid value for '--port'" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("WFLO_LEASE_SECONDS", "1e23"), ("WFLO_RETENTION_DAYS", "99999999999"), ("WFLO_RESERVATION_TTL", "1e300"),
     ("WFLO_POLL_INTERVAL", "1e20"), ("WFLO_SESSION_HOURS", "1e20")],
)  # fmt: skip
def test_a_duration_setting_too_long_for_the_clock_is_refused(name: str, value: str, sqlite_url: str) -> None:
    result = CliRunner().invoke(cli, ["runs", "list"], env={"WFLO_DATABASE_URL": sqlite_url, name: value})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {name}='{value}' is not a valid") and "at most" in result.stderr


AGES = [
    ["costs", "--since"],
    ["audit", "verify", "--since"],
    ["audit", "export", "--out", "exported", "--since"],
    ["audit", "prune", "--yes", "--before"],
    ["report", "--since"],
    ["compliance", "report", "--out", "pack", "--since"],
]


@pytest.mark.parametrize("age", ["99999999999d", "1000000d"])
@pytest.mark.parametrize("command", AGES, ids=[" ".join(c[:2]) for c in AGES])
def test_an_age_older_than_the_calendar_is_one_line(command: list[str], age: str, sqlite_url: str) -> None:
    invoke("db", "migrate", db=sqlite_url)
    result = invoke(*command, age, db=sqlite_url)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: invalid {command[-1]} '{age}': it is outside the years 1 to 9999"


def test_a_token_expiring_past_the_calendar_is_one_line(sqlite_url: str) -> None:
    invoke("admin", "bootstrap", db=sqlite_url)
    result = invoke("tokens", "create", "--name", "ci", "--role", "viewer", "--expires", "9999999d", db=sqlite_url)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: a duration is at most 36500 days ('never' for no end), got '9999999d'"
    made = invoke("tokens", "create", "--name", "ci", "--role", "viewer", "--expires", "36500d", db=sqlite_url)
    assert made.exit_code == 0 and "expires 21" in made.stdout, made.output


@pytest.mark.parametrize("target", [":greet", "cliapp:", ":"])
def test_run_without_a_module_or_a_function_is_one_line(target: str, sqlite_url: str) -> None:
    result = invoke("run", target, db=sqlite_url)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {target!r} is not MODULE:FUNCTION (e.g. myapp.agents:research)"


@pytest.mark.parametrize(
    ("source", "raised"),
    [("raise RuntimeError('no API key set')\n", "RuntimeError: no API key set"),
     ("def broken(:\n", "SyntaxError: invalid syntax (brokenapp.py, line 1)")],
)  # fmt: skip
def test_a_module_that_raises_on_import_is_one_line(source: str, raised: str, sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "brokenapp.py").write_text(source)
    expected = f"error: cannot import 'brokenapp': it raised {raised} (WFLO_DEBUG=1 shows where)"
    for args in (["run", "brokenapp:wf"], ["worker", "-i", "brokenapp"], ["mcp", "serve", "--workflow", "x", "--tools",
                                                                          "brokenapp:TOOLS"]):  # fmt: skip
        result = invoke(*args, db=sqlite_url)
        assert result.exit_code == 2 and result.stderr.strip() == expected, (args, result.output)
    file = invoke("worker", "-i", str(tmp_path / "brokenapp.py"), db=sqlite_url)
    assert file.exit_code == 2 and file.stderr.startswith(
        f"error: cannot import '{tmp_path / 'brokenapp.py'}': it raised"
    )


@pytest.mark.parametrize("content", ["[]", '"token"', "5", "not json", ""])
def test_a_credentials_file_that_is_not_an_object_is_not_a_sign_in(
    content: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "credentials.json").write_text(content)
    monkeypatch.setenv("WFLO_CREDENTIALS", str(tmp_path / "credentials.json"))
    invoke("db", "migrate", db=sqlite_url)
    result = invoke("whoami", db=sqlite_url)
    assert result.exit_code == 0 and result.stdout.startswith("user:ops via local"), result.output


@pytest.mark.parametrize("query", ["synchronus=FULL", "mode=ro", "cache"])
def test_an_unknown_sqlite_url_parameter_is_refused_not_ignored(query: str, sqlite_url: str) -> None:
    result = invoke("runs", "list", db=f"{sqlite_url}?{query}")
    assert result.exit_code == 2, result.output
    name = query.split("=")[0]
    assert result.stderr.startswith(f"error: unknown parameter '{name}' in '{sqlite_url}?{query}'")
    assert "a SQLite URL takes synchronous= and pool_size=" in result.stderr


def test_demo_in_a_directory_that_holds_a_store_says_so(tmp_path: Path, sqlite_url: str) -> None:
    """Its runs have fixed ids: on an earlier demo's store they replayed and it said 'BROKEN'."""
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "wflo.db").write_bytes(b"")
    result = invoke("demo", "--dir", str(tmp_path / "kept"), "--auto-approve", db=sqlite_url)
    assert result.exit_code == 2, result.output
    assert (
        result.stderr.strip()
        == f"error: {tmp_path / 'kept'} holds a store already (wflo.db): give the demo a new or empty --dir"
    )


def test_a_run_id_that_looks_like_markup_is_printed_as_it_is(sqlite_url: str, tmp_path: Path) -> None:
    run_id = "[/]order-7"  # an idempotency key is the caller's text
    started = invoke("run", "cliapp:greet", "--input", '{"name": "x"}', "--id", run_id, "--start", db=sqlite_url)
    assert started.exit_code == 0 and started.stdout == f"{run_id}\n"
    assert invoke("runs", "show", run_id, db=sqlite_url).stdout.startswith(f"run {run_id}  queued")
    assert invoke("runs", "cancel", run_id, db=sqlite_url).stdout.startswith(f"run {run_id}: cancel requested")
    out = tmp_path / "[/]export"
    exported = invoke("audit", "export", "--out", str(out), "--run", run_id, db=sqlite_url)
    assert exported.exit_code == 0 and f"to {out} (events.jsonl" in exported.stdout


def test_a_directory_that_looks_like_markup_is_printed_as_it_is(sqlite_url: str, tmp_path: Path) -> None:
    pack = tmp_path / "[/]pack"
    pack.mkdir(parents=True)
    result = invoke("compliance", "verify", str(pack), db=sqlite_url)
    assert result.exit_code == 10 and result.stderr.strip() == f"NOT INTACT {pack}: manifest.json is missing"


def test_demo_in_a_directory_that_looks_like_markup(tmp_path: Path, sqlite_url: str) -> None:
    result = invoke("demo", "--dir", str(tmp_path / "[/]demo"), "--auto-approve", db=sqlite_url)
    assert f"embedded store sqlite:///{tmp_path / '[/]demo'}/wflo.db" in result.stdout, result.output


def test_an_argument_that_is_not_utf8_is_one_line(sqlite_url: str) -> None:
    """Bytes from a terminal in another encoding reach Python as lone surrogates: every store
    query, hash and JSON refused them with a traceback. The real entry point, as a shell runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_DATABASE_URL=sqlite_url, PYTHONPATH=os.pathsep.join(sys.path))
    invoke("db", "migrate", db=sqlite_url)
    for args in ([b"runs", b"show", b"\xff\xfe"], [b"runs", b"list", b"--workflow", b"caf\xe9"]):
        proc = subprocess.run([sys.executable.encode(), b"-m", b"wflo.cli", *args], env=env, capture_output=True,
                              timeout=60)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        bad = args[-1]
        assert proc.stderr.decode().strip() == (
            f"error: the argument {bad!r} is not UTF-8 text; retype it or check the terminal's encoding"
        )
    proc = subprocess.run([sys.executable, "-m", "wflo.cli", "whoami"], env={**env, "WFLO_PRINCIPAL": "user:\udcff"},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == "error: WFLO_PRINCIPAL=b'user:\\xff' is not UTF-8 text"
    ok = subprocess.run([sys.executable, "-m", "wflo.cli", "runs", "show", "café"], env=env, capture_output=True,
                        text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 3 and ok.stderr.strip() == "error: no run with id 'café'"


def test_approving_a_decided_request_says_only_that(sqlite_url: str) -> None:
    started = invoke("run", "cliapp:refund_flow", "--input", '["A-1", 250.0]', "--start", db=sqlite_url)
    invoke("runs", "resume", started.stdout.strip(), "--import", "cliapp", "--no-wait", db=sqlite_url)
    request = json.loads(invoke("approvals", "list", "--json", db=sqlite_url).stdout)[0]["id"]
    assert invoke("grant", "user:boss", "finance", db=sqlite_url).exit_code == 0
    rejected = invoke("reject", request, "--reason", "no", db=sqlite_url, principal="user:boss")
    assert rejected.exit_code == 0, rejected.output
    again = invoke("approve", request, db=sqlite_url, principal="user:boss")
    assert again.exit_code == 1 and again.stdout == ""  # no "approving …" line first
    assert again.stderr.strip() == f"error: approval {request} is already rejected"


def test_a_third_ctrl_c_stops_the_worker_at_once_and_the_run_resumes_elsewhere(sqlite_url: str, tmp_path: Path) -> None:
    import signal
    import time

    (tmp_path / "sleepyapp.py").write_text(
        "import time\nimport wflo\n\n\n@wflo.step\ndef nap(s: float) -> float:\n    time.sleep(s)\n    return s\n\n\n"
        "@wflo.workflow(name='sleepy')\ndef sleepy(s: float) -> float:\n    return nap(s)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_DATABASE_URL=sqlite_url, WFLO_LEASE_SECONDS="1", PYTHONPATH=os.pathsep.join(sys.path))
    started = invoke("run", "sleepyapp:sleepy", "--input", "[4]", "--start", db=sqlite_url)
    run_id = started.stdout.strip()
    worker = subprocess.Popen(
        [sys.executable, "-m", "wflo.cli", "worker", "-i", "sleepyapp"], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert worker.stdout is not None
    for line in worker.stdout:  # wait until it holds the run
        if line.startswith("claimed"):
            break
    # The first asks the run to finish (--grace), the second to be handed back after its step (a
    # 4 s step here), the third leaves at once, as a crash would.
    for _ in range(3):
        worker.send_signal(signal.SIGINT)
        time.sleep(0.3)
    t0 = time.monotonic()
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 130 and time.monotonic() - t0 < 3, out + err  # not after the 4 s step
    assert "exiting now: a run still in a step resumes elsewhere when its lease lapses" in out
    assert "Traceback" not in err, err
    time.sleep(1.5)  # the lease (1 s) of the worker that left
    again = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "worker", "-i", "sleepyapp", "--max-runs", "1", "--idle-exit", "20", "-q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    shown = json.loads(invoke("runs", "show", run_id, "--json", db=sqlite_url).stdout)
    assert shown["status"] == "succeeded" and shown["output"] == 4
