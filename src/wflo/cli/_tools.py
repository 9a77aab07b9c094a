"""``wflo tools …``: the built-in secure tools."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from ..tools import catalog
from ._app import cli, console, dump_json, handle_errors


@cli.group()
def tools() -> None:
    """The built-in secure tools an agent can be given (SQL, HTTP, files, Python)."""


@tools.command("list")
@click.option("--json", "as_json", is_flag=True, help="The full catalog (with argument schemas) as JSON.")
@handle_errors
def tools_list(as_json: bool) -> None:
    """Each built-in tool: its arguments, risk level, default approval and what it does."""
    entries = catalog()
    if as_json:
        dump_json(entries)
        return
    table = Table(box=None, header_style="bold")
    for col in ("tool", "arguments", "risk", "approval", "description"):
        table.add_column(col)
    for entry in entries:
        params = entry["parameters"]
        required = set(params.get("required", []))
        args = ", ".join(name if name in required else f"[{name}]" for name in params.get("properties", {}))
        style = {"low": "green", "medium": "yellow", "high": "red"}.get(entry["risk"], "")
        table.add_row(
            entry["name"],
            escape(args),
            f"[{style}]{entry['risk']}[/]",
            "required" if entry["approval"] else "-",
            escape(entry["description"]),
        )
    console.print(table)
    console.print("build them with:", ", ".join(sorted({e["factory"].split("(")[0] for e in entries})), soft_wrap=True)
