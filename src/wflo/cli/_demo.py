"""``wflo demo``."""

from __future__ import annotations

import sys

import click

from ._app import cli, handle_errors


@cli.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="Keep the demo's store here (default: a temporary directory).",
)
@click.option(
    "--auto-approve",
    is_flag=True,
    help="Approve the refund itself instead of waiting for you (automatic without a terminal).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the measured figures as JSON.")
@handle_errors
def demo_cmd(directory: str | None, auto_approve: bool, as_json: bool) -> None:
    """Watch the promises hold on a scripted research agent: no API key, no server, about a minute."""
    from ..demo import run_demo

    sys.exit(run_demo(directory=directory, auto_approve=auto_approve, as_json=as_json))
