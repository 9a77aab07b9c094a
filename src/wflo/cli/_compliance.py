"""``wflo compliance report|verify``: signed evidence packs for an auditor."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from .. import config
from ..audit import load_private_key, load_public_key, parse_when, read_checkpoint
from ..compliance import build_pack, verify_pack
from ..errors import UserError
from ..store import now_iso
from ._app import cli, console, dump_json, err_console, handle_errors


@cli.group()
def compliance() -> None:
    """Evidence packs mapped to the EU AI Act, SOC 2 and ISO/IEC 42001 (docs/compliance.md)."""


@compliance.command("report")
@click.option(
    "--framework",
    type=click.Choice(["eu-ai-act", "soc2", "iso42001", "all"]),
    default="all",
    show_default=True,
    help="Which controls the sections are mapped to.",
)
@click.option("--since", required=True, metavar="DATE", help="Start of the period (YYYY-MM-DD, ISO time, or 30d).")
@click.option("--until", metavar="DATE", help="End of the period (exclusive; default: now).")
@click.option("--format", "fmt", type=click.Choice(["html", "pdf", "json"]), default="html", show_default=True)
@click.option("--out", "out", required=True, metavar="DIR", help="A new or empty directory for the pack.")
@click.option("--key", "key_path", metavar="PEM", help="The audit key that signs the manifest. Env: WFLO_AUDIT_KEY.")
@click.option("--checkpoint", "checkpoint_path", metavar="FILE", help="Verify the history against this checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@handle_errors
def report_cmd(
    framework: str,
    since: str,
    until: str | None,
    fmt: str,
    out: str,
    key_path: str | None,
    checkpoint_path: str | None,
    as_json: bool,
) -> None:
    """Write an evidence pack: report, evidence.json, cited records, signed manifest."""
    cfg = config.settings()
    start = parse_when(since, option="--since")
    end = parse_when(until, option="--until") if until else now_iso()
    if end <= start:
        raise UserError(f"--until ({until or 'now'}) must be after --since ({since})")
    key_path = key_path or cfg.compliance_key
    if not key_path:
        raise UserError("a pack is signed with the audit key: pass --key PEM or set WFLO_AUDIT_KEY "
                        "(make one with: wflo audit keygen --out audit-key.pem)")  # fmt: skip
    if not Path(key_path).is_file():
        raise UserError(f"key file {key_path} not found (make one with: wflo audit keygen --out {key_path})")
    key = load_private_key(key_path)
    doc = read_checkpoint(checkpoint_path) if checkpoint_path else None
    manifest = build_pack(
        config.get_store(create=False), out, since=start, until=end, private_key=key, framework=framework, fmt=fmt,
        checkpoint=doc, retention_days=cfg.retention_days, by=cfg.principal or "unknown",
    )  # fmt: skip
    if as_json:
        dump_json(manifest)
        return
    names = ", ".join(f["name"] for f in manifest["files"])
    console.print(
        f"evidence pack written to {out}: {names} + manifest.json ({manifest['records']} cited records)", markup=False
    )


@compliance.command("verify")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--public-key", "public_key_path", metavar="PEM", help="Pin the signer (the audit key's public half).")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def verify_cmd(directory: str, public_key_path: str | None, as_json: bool) -> None:
    """Check a pack offline: exit 0 if intact, else exit 10 with the first problem in one line."""
    key = load_public_key(public_key_path) if public_key_path else None
    result = verify_pack(directory, key)
    if as_json:
        dump_json({"ok": result.ok, "problem": result.problem, "files": result.files, "records": result.records,
                   "signer": result.signer, "pinned": result.pinned})  # fmt: skip
    elif result.ok:
        console.print(f"[green]intact[/]: {result.files} files and {result.records} records match the signed manifest")
        if not result.pinned:  # anyone can sign a manifest: only a pinned key says it was the audit key
            err_console.print(
                f"signed by key {result.signer}; pass --public-key to check it is your audit key", markup=False
            )
    else:
        err_console.print(f"[red]NOT INTACT[/] {escape(f'{directory}: {result.problem}')}", soft_wrap=True)
    if not result.ok:
        sys.exit(10)
