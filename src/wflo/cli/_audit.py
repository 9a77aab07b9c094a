"""``wflo audit verify``: recompute the hash chains and report the first broken link."""

from __future__ import annotations

import sys

import click

from .. import _config
from ..audit import verify_all, verify_chain
from ._app import cli, console, dump_json, err_console, handle_errors


@cli.group()
def audit() -> None:
    """The flight recorder: verify the tamper-evident history."""


@audit.command("verify")
@click.argument("run_id", required=False)
@click.option(
    "--all", "all_chains", is_flag=True, help="Every run's chain and the system chain (the default without RUN_ID)."
)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def verify_cmd(run_id: str | None, all_chains: bool, as_json: bool) -> None:
    """Exit 0 only if every chain is intact; else name the first broken link (exit 10)."""
    store = _config.get_store()
    reports = [verify_chain(store, store.find_run(run_id).id)] if run_id and not all_chains else verify_all(store)
    broken = [r for r in reports if not r.ok]
    if as_json:
        dump_json({"ok": not broken, "chains": len(reports), "events": sum(r.count for r in reports),
                   "broken": [{"chain": r.chain, "seq": r.seq, "kind": r.kind, "expected": r.expected, "found": r.found} for r in broken]})  # fmt: skip
    else:
        for r in broken:
            err_console.print(f"[red]BROKEN[/] {r.describe()}")
        total = sum(r.count for r in reports)
        console.print(
            f"{'[green]intact[/]' if not broken else '[red]broken[/]'}: {len(reports)} chains, {total} events verified"
        )
    if broken:
        sys.exit(10)
