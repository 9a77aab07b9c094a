"""``wflo mcp …``: serve granted tools to MCP clients."""

from __future__ import annotations

import importlib
from typing import Any

import click

from ..errors import UserError
from ._app import cli, err_console, failed_import, handle_errors


@cli.group()
def mcp() -> None:
    """The Model Context Protocol: wflo tools for MCP clients (needs wflo[mcp])."""


def _tools_from(spec: str) -> list[Any]:
    from ..tools import Tool

    module, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in (attr or "TOOLS").split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:  # ValueError: no module name (":X")
        raise UserError(f"--tools {spec}: cannot load it ({exc})") from None
    except Exception as exc:
        failed_import(module, exc)
    items = obj() if callable(obj) and not isinstance(obj, Tool) else obj
    items = list(items) if isinstance(items, list | tuple) else [items]
    if not all(isinstance(t, Tool) for t in items):
        raise UserError(f"--tools {spec} must name a wflo.tools.Tool or a list of them")
    return items


@mcp.command("serve")
@click.option("--workflow", required=True, help="Calls run as this workflow; its grants decide the tools listed.")
@click.option("--tenant", help="Runs belong to this tenant (its grants count too).")
@click.option("--agent", help="Calls are made as this agent (its grants count too).")
@click.option(
    "--tools", "tools_spec", help="module:ATTR holding wflo.tools.Tool objects to serve besides installed packages."
)
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP only.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535),
              help="HTTP only (streamable HTTP at /mcp).")  # fmt: skip
@handle_errors
def mcp_serve(workflow: str, tenant: str | None, agent: str | None, tools_spec: str | None, transport: str,
              host: str, port: int) -> None:  # fmt: skip
    """Serve the installed tool packages (and --tools) granted to the workflow, tenant or agent.
    Each call is a journaled run of WORKFLOW: grants, loop guard and approvals apply."""
    from ..mcp import serve
    from ..tools import installed, load

    tools: list[Any] = _tools_from(tools_spec) if tools_spec else []
    for name in sorted({pkg.manifest.name for pkg in installed()}):  # a name two packages declare: once
        try:
            tools.append(load(name))
        except UserError as exc:
            err_console.print(f"skipped {name}: {exc}", markup=False)
    serve(tools, workflow=workflow, tenant=tenant, agent=agent, transport=transport, host=host, port=port)
