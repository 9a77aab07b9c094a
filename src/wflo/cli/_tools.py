"""``wflo tools …``: the built-in secure tools, tool packages, grants and trusted publishers."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.markup import escape
from rich.text import Text

from .. import config
from ..errors import UserError
from ..tools import catalog
from ._app import Table, cli, console, dump_json, err_console, handle_errors


@cli.group()
def tools() -> None:
    """Tools an agent can be given: built-ins (SQL, HTTP, files, Python) and installed packages;
    their grants and trusted publishers."""


def _entries() -> list[dict[str, Any]]:
    return catalog(packages=True)


@tools.command("list")
@click.option("--json", "as_json", is_flag=True, help="The full catalog (with argument schemas) as JSON.")
@handle_errors
def tools_list(as_json: bool) -> None:
    """Each tool: where it comes from, its arguments, effects, risk and what it does."""
    entries = _entries()
    if as_json:
        dump_json(entries)
        return
    table = Table(box=None, header_style="bold")
    for col in ("tool", "source", "arguments", "effects", "risk", "approval", "description"):
        table.add_column(col)
    for entry in entries:
        params = entry.get("parameters") or entry.get("input_schema") or {}
        required = set(params.get("required", []))
        args = ", ".join(name if name in required else f"[{name}]" for name in params.get("properties", {}))
        effects = ",".join(k for k, v in entry["effects"].items() if v) or "-"
        risk = entry.get("risk", "")
        style = {"low": "green", "medium": "yellow", "high": "red"}.get(risk, "")
        table.add_row(
            Text(entry["name"] + " (clash)", style="red") if "clash" in entry else entry["name"],
            entry["source"],
            args,
            effects,
            Text(risk, style=style) if style else "-",
            "required" if entry.get("approval") or entry["effects"].get("destructive") else "-",
            entry["description"],
        )
    console.print(table)
    for line in dict.fromkeys(e["clash"] for e in entries if "clash" in e):
        console.print(f"clash: {line}", soft_wrap=True, markup=False, style="red")
    factories = sorted({e["factory"].split("(")[0] for e in entries if "factory" in e})
    console.print("build the built-ins with:", ", ".join(factories), soft_wrap=True)


@tools.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The manifest as JSON.")
@handle_errors
def tools_show(name: str, as_json: bool) -> None:
    """Print a tool's manifest: effects, capabilities, limits, publisher, signature."""
    entries = _entries()
    matches = [e for e in entries if e["name"] == name]
    if not matches:
        names = ", ".join(e["name"] for e in entries)
        raise UserError(f"no tool named {name!r} (tools: {names})")
    entry = matches[0]  # a built-in sorts first: its factory builds it whatever a package declares
    if len(matches) > 1 and entry["source"] != "built-in":
        raise UserError(f"{entry['clash']} (wflo tools list --json shows each)")
    if as_json:
        dump_json(entry)
        return
    console.print(json.dumps(entry, indent=2), soft_wrap=True, markup=False, highlight=False)


@tools.command("install", context_settings={"ignore_unknown_options": True})
@click.argument("spec", nargs=-1, required=True)
@handle_errors
def tools_install(spec: tuple[str, ...]) -> None:
    """Install a tool package with pip (this interpreter's): `wflo tools install acme-tools`."""
    before = {p.manifest.name for p in _installed_quiet()}
    if _pip(["install", *spec]) != 0:
        raise UserError(f"pip could not install {' '.join(spec)}")
    new = sorted({p.manifest.name for p in _installed_quiet()} - before)
    console.print(f"new tools: {', '.join(new)}" if new else "no new tools (is it a wflo tool package?)", markup=False)
    if new:
        console.print("grant them before a run can use them: wflo tools grant NAME --to workflow:NAME")
    for line in dict.fromkeys(e["clash"] for e in _entries() if "clash" in e):
        console.print(f"clash: {line}", soft_wrap=True, markup=False, style="red")


def _pip(args: list[str]) -> int:
    """pip of this interpreter, so the tools land where wflo runs."""
    import subprocess
    import sys

    return subprocess.call([sys.executable, "-m", "pip", *args])


def _installed_quiet() -> list[Any]:
    import importlib

    from ..tools import installed

    importlib.invalidate_caches()
    return installed()


@tools.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
@handle_errors
def tools_remove(name: str, yes: bool) -> None:
    """Uninstall the package that provides tool NAME (or the distribution NAME) with pip."""
    dists = sorted({p.distribution for p in _installed_quiet() if p.manifest.name == name})
    if len(dists) > 1:
        each = " or ".join(f"wflo tools remove {d}" for d in dists)
        raise UserError(
            f"the tool {name!r} is declared by {' and '.join(dists)}: name the distribution to uninstall ({each})"
        )
    dist = dists[0] if dists else name
    if not yes:
        click.confirm(f"uninstall {dist}?", abort=True)
    if _pip(["uninstall", "-y", dist]) != 0:
        raise UserError(f"pip could not uninstall {dist}")


@tools.command("grant")
@click.argument("name")
@click.option("--to", "to", required=True, help="workflow:NAME, tenant:NAME or agent:NAME")
@click.option("--approval", help="none, required, or approvers: role:ops,user:ana (default: destructive tools ask)")
@click.option("--max-calls", type=int, help="Calls of the tool allowed per run.")
@click.option("--budget", help="USD its priced calls may cost per run.")
@handle_errors
def tools_grant(name: str, to: str, approval: str | None, max_calls: int | None, budget: str | None) -> None:
    """Let runs of a workflow (tenant, agent) use a tool; recorded on the audit chain."""
    from ..tools import grant

    g = grant(name, to, approval=approval, max_calls=max_calls, budget_usd=budget)
    extra = [f"approval {g.approval}" if g.approval else "", f"max {g.max_calls} calls/run" if g.max_calls else "",
             f"${g.budget_usd} per run" if g.budget_usd is not None else ""]  # fmt: skip
    console.print(f"granted {g.tool} to {g.principal}" + "".join(f", {e}" for e in extra if e), markup=False)


@tools.command("revoke")
@click.argument("name")
@click.option("--to", "to", required=True, help="workflow:NAME, tenant:NAME or agent:NAME")
@handle_errors
def tools_revoke(name: str, to: str) -> None:
    """Remove a grant; recorded on the audit chain."""
    from ..tools import revoke

    existed = revoke(name, to)
    console.print(f"revoked {name} from {to}" if existed else f"{name} was not granted to {to}", markup=False)


@tools.command("grants")
@click.option("--tool", help="Only this tool's grants.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def tools_grants(tool: str | None, as_json: bool) -> None:
    """Who may use which tool, under which approval and limits."""
    config.get_store(create=False)  # only reads: a store that is not there is named, not created
    from ..tools import grants

    rows = grants(tool)
    if as_json:
        dump_json([g.to_dict() for g in rows])
        return
    if not rows:
        console.print("no tool grants (wflo tools grant NAME --to workflow:NAME)")
        return
    table = Table(box=None, header_style="bold")
    for col in ("tool", "to", "approval", "max calls", "budget", "by", "at"):
        table.add_column(col)
    for g in rows:
        d = g.to_dict()
        table.add_row(g.tool, g.principal, d["approval"] or "default", str(d["max_calls"] or "-"),
                      f"${d['budget_usd']}" if d["budget_usd"] else "-", g.granted_by, g.granted_at)  # fmt: skip
    console.print(table)


@tools.command("trust")
@click.argument("key")
@click.option("--name", default="", help="Who the key belongs to.")
@click.option(
    "--tools",
    "tool_names",
    default=None,
    help="The tool names the key may vouch for, comma-separated (without it: any tool name).",
)
@handle_errors
def tools_trust(key: str, name: str, tool_names: str | None) -> None:
    """Trust a publisher's key for signed tool packages, for the tools it may vouch for.

    KEY is the publisher's Ed25519 public key (a PEM file or base64), or the id of a key trusted
    already (to change its tools; trusting a key again replaces its tools)."""
    from ..tools import trust, trusted_keys

    kid = trust(key, name=name, tools=tool_names)
    info = trusted_keys()[kid]
    scope = "any tool" if info["tools"] is None else ", ".join(info["tools"])
    label = f" ({info['name']})" if info["name"] else ""
    console.print(f"trusted key {kid}{label} for {scope}", markup=False)
    if info["tools"] is None:
        err_console.print(
            f"warning: key {kid} may vouch for any tool name, another publisher's granted tools included; "
            f"limit it: wflo tools trust {kid} --tools NAME,...",
            markup=False,
            soft_wrap=True,
        )


@tools.command("untrust")
@click.argument("key_id")
@handle_errors
def tools_untrust(key_id: str) -> None:
    """Stop trusting a publisher key (by the id `wflo tools trusted` shows)."""
    from ..tools import untrust

    console.print(f"untrusted {key_id}" if untrust(key_id) else f"{key_id} was not trusted", markup=False)


@tools.command("trusted")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def tools_trusted(as_json: bool) -> None:
    """The publisher keys trusted for signed tool packages."""
    config.get_store(create=False)  # only reads: a store that is not there is named, not created
    from ..tools import trusted_keys

    keys = trusted_keys()
    if as_json:
        dump_json(keys)
        return
    for kid, info in keys.items():
        scope = "any tool" if info["tools"] is None else "tools: " + ", ".join(info["tools"])
        console.print(
            f"{kid}  {escape(info['name'] or '-')}  {scope}  "
            f"trusted by {escape(info['trusted_by'])} at {info['trusted_at']}"
        )
    if not keys:
        console.print("no trusted publisher keys (wflo tools trust KEY)")


@tools.command("sign")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--key",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Ed25519 private key (wflo audit keygen).",
)
@handle_errors
def tools_sign(directory: str, key: str) -> None:
    """Sign a tool package directory (the one holding wflo_tools.json) before you build it."""
    from ..tools import sign_package

    out = sign_package(directory, key)
    print(f"wrote {out}", file=sys.stdout)
