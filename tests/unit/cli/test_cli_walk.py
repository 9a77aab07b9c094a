"""Every command of the `wflo` tree, given bad input: one line and a non-zero exit, never a traceback.

The commands are found by walking click's command tree, so a command added later is covered
without editing this file. In-process (CliRunner): an exception escaping a command shows up
as ``result.exception`` (it would be a traceback in a terminal).
"""

from __future__ import annotations

import os
import traceback

import click
import pytest
from click.testing import CliRunner, Result

from wflo.cli import cli
from wflo.cli._docs import _walk

GARBAGE = "/proc/nonexistent/garbage-é"
"""Not a run id, not a number, not JSON, not a date, not a scope, and a path nothing can create."""

LEAVES = [(path, cmd) for path, cmd in _walk(cli, []) if path and not isinstance(cmd, click.Group)]


def _bad_args(cmd: click.Command) -> list[str]:
    """Each argument and each option that takes a value, given GARBAGE."""
    args: list[str] = []
    for param in cmd.params:
        if isinstance(param, click.Argument):
            args += [GARBAGE] * (1 if param.nargs == 1 else 2)
        elif isinstance(param, click.Option) and not param.is_flag and not param.count and param.name != "help":
            args += [param.opts[0], GARBAGE]
    return args or [GARBAGE]  # a command that takes nothing: an argument it does not expect


def _check(result: Result, what: str) -> None:
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(exc))
        pytest.fail(f"{what}: traceback instead of a one-line error:\n{tb}")
    assert result.exit_code != 0, f"{what}: exit 0 on bad input\n{result.output}"
    assert "Traceback" not in result.output, what
    if result.exit_code != 2 or "Usage:" not in result.output:  # click's own usage errors are fine as they are
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
        assert lines, f"{what}: failed silently"
        assert len(lines) <= 2, f"{what}: more than a line or two on stderr:\n{result.stderr}"


@pytest.mark.parametrize(("path", "cmd"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_command_with_bad_input_gives_one_line_and_a_non_zero_exit(
    path: list[str], cmd: click.Command, sqlite_url: str, tmp_path: object
) -> None:
    runner = CliRunner()
    env = {"WFLO_DATABASE_URL": sqlite_url, "WFLO_PRINCIPAL": "user:tester"}
    os.chdir(str(tmp_path))
    # 1. Every argument and option value wrong, on a good (empty) store.
    _check(runner.invoke(cli, [*path, *_bad_args(cmd)], env=env), f"wflo {' '.join(path)} <garbage>")
    # 2. An option that does not exist.
    _check(runner.invoke(cli, [*path, "--no-such-option"], env=env), f"wflo {' '.join(path)} --no-such-option")
    # 3. A bad setting: refused before the command runs.
    bad_env = {**env, "WFLO_LEASE_SECONDS": "soon"}
    result = runner.invoke(cli, [*path, *_bad_args(cmd)], env=bad_env)
    _check(result, f"WFLO_LEASE_SECONDS=soon wflo {' '.join(path)}")
    # 4. A store that cannot be opened.
    unreachable = {**env, "WFLO_DATABASE_URL": f"sqlite:///{GARBAGE}/wflo.db"}
    _check(runner.invoke(cli, [*path, *_bad_args(cmd)], env=unreachable), f"unreachable store: wflo {' '.join(path)}")


def test_the_walk_finds_the_commands() -> None:
    names = {" ".join(p) for p, _ in LEAVES}
    assert {"run", "runs resume", "costs", "audit verify", "budgets show", "demo", "worker"} <= names


def test_the_real_entry_point_prints_one_line_for_a_bad_setting(sqlite_url: str) -> None:
    """The same through `python -m wflo.cli` (what a terminal shows, not what CliRunner catches)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_DATABASE_URL=sqlite_url, WFLO_OTEL="maybe")
    proc = subprocess.run([sys.executable, "-m", "wflo.cli", "runs", "list"], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        == "error: WFLO_OTEL='maybe' is not a valid otel setting; accepted: 1/0, true/false, yes/no, on/off"
    )


def test_python_dash_m_wflo_is_the_wflo_command(sqlite_url: str) -> None:
    # Where a venv's scripts are not on PATH, ``python -m wflo`` is what people type; it said
    # "'wflo' is a package and cannot be directly executed".
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_DATABASE_URL=sqlite_url)
    proc = subprocess.run([sys.executable, "-m", "wflo", "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: wflo "), proc.stdout + proc.stderr
