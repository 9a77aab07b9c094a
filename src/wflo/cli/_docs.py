"""Generate ``docs/cli.md`` from the command line itself: ``python -m wflo.cli._docs > docs/cli.md``.

A test regenerates it and compares, so the reference never drifts from the code.
"""

from __future__ import annotations

import click

from .. import errors
from . import cli


def _walk(cmd: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            out += _walk(cmd.commands[name], [*path, name])
    return out


def render() -> str:
    lines = [
        "# Command line reference",
        "",
        "Generated from `wflo --help` by `python -m wflo.cli._docs > docs/cli.md`; a test checks it is current. "
        "Where the environment's scripts are not on PATH, `python -m wflo` is the same command.",
        "",
    ]
    for path, cmd in _walk(cli, ["wflo"]):
        # The same help option names as the real command line (click caches the help option per
        # command, so a differently configured context here would depend on what ran first).
        ctx = click.Context(
            cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100, help_option_names=["-h", "--help"]
        )
        lines += [f"## `{' '.join(path)}`", "", "```text", cmd.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(lines + _exit_statuses())


def _exit_statuses() -> list[str]:
    """The exit statuses of ``wflo``, from ``wflo.errors.exit_code_for`` and the errors' classes."""
    by_status: dict[int, list[str]] = {}
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, BaseException) and "code" in vars(cls):
            by_status.setdefault(errors.exit_code_for(cls), []).append(f"`{name}`")
    lines = [
        "## Exit status",
        "",
        "Every command ends with one of these; a mistake or a refusal prints one line on stderr (the error's class is "
        "`wflo.errors.X`), never a traceback.",
        "",
        "| status | when |",
        "|---|---|",
        "| 0 | success |",
    ]
    for status in sorted(by_status):
        other = "any other error, and " if status == 1 else ""
        lines.append(f"| {status} | {other}{', '.join(sorted(by_status[status]))} |")
    lines += [
        "| 130 | interrupted (Ctrl-C; `wflo worker`: the third Ctrl-C, or `128 + signal` for a third signal) |",
        "| 141 | the reader of the output went away (`wflo runs list \\| head -1`); nothing more is printed |",
        "",
    ]
    return lines


if __name__ == "__main__":
    print(render(), end="")
