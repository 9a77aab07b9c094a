"""``wflo audit …`` (verify, keygen, checkpoint, prune, export, verify-export) and ``wflo report``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from .. import config
from ..audit import (
    ChainReport,
    build_report,
    count_events,
    export,
    generate_key,
    load_private_key,
    load_public_key,
    parse_when,
    prune,
    prune_candidates,
    read_checkpoint,
    render_html,
    verify_all,
    verify_book,
    verify_checkpoint,
    verify_export,
    verify_run,
    write_checkpoint,
)
from ..errors import UserError
from ._app import cli, console, dump_json, err_console, fail, handle_errors, plural


def _where_broken(r: ChainReport) -> str:
    """``r2: at seq 3 (hash): expected …, found …``: what follows a ``BROKEN`` or ``NOT EXTENDED``
    verdict (``ChainReport.describe`` says "BROKEN" itself, and the line would say it twice)."""
    if r.ok:
        return r.describe()
    return f"{r.chain}: at seq {r.seq} ({r.kind}): expected {r.expected}, found {r.found}"


def _principal() -> str:
    return config.settings().principal or "unknown"


@cli.group()
def audit() -> None:
    """The flight recorder: verify, sign, prune and export the tamper-evident history."""


@audit.command("verify")
@click.argument("run_id", required=False)
@click.option(
    "--all", "all_chains", is_flag=True, help="Every run's chain and the system chain (the default without RUN_ID)."
)
@click.option(
    "--checkpoint",
    "checkpoint_path",
    metavar="FILE",
    help="Also check the signed checkpoint FILE and that the database still extends it.",
)
@click.option(
    "--public-key",
    "public_key_path",
    metavar="PEM",
    help="The audit key's public half: pins the checkpoint's signer, and only prunes it signed count as prunes.",
)
@click.option(
    "--since",
    metavar="DATE",
    help="Only chains with events at or after DATE (each verified whole), and the spend book of those runs "
    "and of any run with a book row of that hour or later.",
)
@click.option(
    "--no-spend-book",
    "skip_book",
    is_flag=True,
    help="Skip the second pass, which checks the spend book (what `wflo costs` reports) against the journals.",
)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def verify_cmd(
    run_id: str | None,
    all_chains: bool,
    checkpoint_path: str | None,
    public_key_path: str | None,
    since: str | None,
    skip_book: bool,
    as_json: bool,
) -> None:
    """Exit 0 only if every chain is intact (and extends the checkpoint) and the spend book
    agrees with the journals; else name the first broken link of each chain and each spend
    book row that differs from its run's journal (exit 10).

    The spend book is checked in a second pass, per run and model (the run's book only, with
    RUN_ID); a pruned run's rows against the figures its prune record kept."""
    doc = read_checkpoint(checkpoint_path) if checkpoint_path else None
    key = load_public_key(public_key_path) if public_key_path else None
    store = config.get_store(create=False)
    cutoff = parse_when(since, option="--since") if since else None
    if run_id and not all_chains:
        reports = [verify_run(store, store.find_run(run_id).id, trusted=key)]
    else:
        reports = verify_all(store, since=cutoff, trusted=key)
    broken = [r for r in reports if not r.ok]
    book = None
    if not skip_book:
        only = reports[0].chain if run_id and not all_chains else None
        if as_json or not sys.stderr.isatty():
            book = verify_book(store, run_id=only, since=cutoff, trusted=key)
        else:
            with err_console.status("checking the spend book against the journals…") as status:
                done = 0

                def progress(runs: int) -> None:
                    nonlocal done
                    done += runs
                    status.update(f"checking the spend book against the journals… {done} runs")

                book = verify_book(store, run_id=only, since=cutoff, trusted=key, on_progress=progress)
    cp = verify_checkpoint(store, doc, key) if doc is not None else None
    ok = not broken and (cp is None or cp.ok) and (book is None or book.ok)
    events = sum(r.count for r in reports if not r.pruned)
    pruned = sum(1 for r in reports if r.pruned)
    if as_json:
        dump_json(
            {
                "ok": ok,
                "chains": len(reports),
                "events": events,
                "pruned": pruned,
                "broken": [
                    {"chain": r.chain, "seq": r.seq, "kind": r.kind, "expected": r.expected, "found": r.found}
                    for r in broken
                ],
                "checkpoint": cp.to_dict() if cp is not None else None,
                "spend_book": book.to_dict() if book is not None else None,
            }
        )
    else:
        # A chain gone under a prune record the pinned key did not sign says so itself
        # (kind ``unsigned-prune``), so the line needs no cause of its own.
        for r in broken:
            err_console.print(f"[red]BROKEN[/] {escape(_where_broken(r))}", soft_wrap=True, markup=True)
        note = f" ({pruned} pruned on record)" if pruned else ""
        console.print(
            f"{'[green]intact[/]' if not broken else '[red]broken[/]'}: {plural(len(reports), 'chain')}, {plural(events, 'event')} verified{note}"
        )
        if book is not None:
            for f in book.findings:
                err_console.print(f"[red]BROKEN[/] {escape(f.describe())}", soft_wrap=True)
            for pruned_run in book.unchecked:
                err_console.print(
                    f"NOT CHECKABLE spend book: run {escape(pruned_run)} (pruned before prunes kept its spend)",
                    soft_wrap=True,
                )
            console.print(f"{'[green]' if book.ok else '[red]'}{escape(book.describe())}[/]", soft_wrap=True)
        if cp is not None:
            if cp.problem:
                err_console.print(
                    f"[red]CHECKPOINT REFUSED[/] {escape(f'{checkpoint_path}: {cp.problem}')}", soft_wrap=True
                )
            for r in cp.reports:
                err_console.print(f"[red]NOT EXTENDED[/] {escape(_where_broken(r))}", soft_wrap=True)
            if cp.ok:
                console.print(
                    f"[green]extends checkpoint[/] of {cp.at}: {plural(cp.chains, 'chain')}, signature valid"
                    f"{' (pinned key)' if cp.pinned else ' (key from the file)'}; what was written after it "
                    "rests on the chains alone"
                )
        elif ok:
            # The chains alone cannot show a consistent rewrite: say so where "intact" is read.
            console.print(
                "no checkpoint given: a chain rewritten with every hash recomputed, or a run deleted whole, "
                "would verify too; check against a signed one with --checkpoint FILE --public-key PEM",
                markup=False,
            )
    if not ok:
        sys.exit(10)


@audit.command("keygen")
@click.option("--out", "out", required=True, metavar="FILE", help="Where to write the private key (mode 0600).")
@handle_errors
def keygen_cmd(out: str) -> None:
    """Make an Ed25519 signing key for checkpoints; print its public key (PEM)."""
    click.echo(generate_key(out), nl=False)
    err_console.print(f"private key written to {out} (mode 0600); keep it away from the database host", markup=False)


@audit.command("checkpoint")
@click.option("--key", "key_path", required=True, metavar="PEM", help="The private key from `wflo audit keygen`.")
@click.option("--out", "out", required=True, metavar="FILE", help="Where to write the signed checkpoint (JSON).")
@handle_errors
def checkpoint_cmd(key_path: str, out: str) -> None:
    """Sign every chain's (count, head) now; keep the file outside the database host.

    Refused (exit 10) if a chain does not verify. `wflo audit verify --checkpoint FILE` later
    proves the database still extends it: no truncated tail, no rewritten chain.
    """
    if not Path(key_path).is_file():
        raise UserError(f"key file {key_path} not found (make one with: wflo audit keygen --out {key_path})")
    doc = write_checkpoint(config.get_store(create=False), key_path, out, by=_principal())
    console.print(
        f"checkpoint {out}: {plural(len(doc['chains']), 'chain')}, {plural(doc['events'], 'event')}, Merkle root {doc['merkle_root'][:16]}…",
        markup=False,
    )


@audit.command("prune")
@click.option(
    "--before",
    required=True,
    metavar="DATE",
    help="Prune finished runs whose last event is before DATE (YYYY-MM-DD, ISO time, or an age: 90d).",
)
@click.option("--yes", is_flag=True, help="Delete without asking (required without a terminal).")
@click.option(
    "--key", "key_path", metavar="PEM", help="Sign the prune record with this Ed25519 key (the checkpoint key)."
)
@click.option(
    "--override-retention",
    "override",
    metavar="REASON",
    help="Prune inside the retention period (WFLO_RETENTION_DAYS); the reason is recorded on the system chain.",
)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def prune_cmd(before: str, yes: bool, key_path: str | None, override: str | None, as_json: bool) -> None:
    """Delete the events of finished runs, on the record (an `audit.pruned` system event).

    Only succeeded, failed, cancelled and stopped runs are pruned, and only chains that
    verify. Their `runs` rows stay; `verify` reports them as pruned, not broken. Signed with
    --key, the record is what `verify --public-key` trusts: a forged prune record is not.
    """
    cutoff = parse_when(before, option="--before")
    private_key = load_private_key(key_path) if key_path else None
    store = config.get_store(create=False)
    if override is None:  # refuse before asking (prune() checks again, and records an override)
        from ..compliance import enforce_retention

        enforce_retention(store, cutoff, by=_principal())
    candidates = prune_candidates(store, cutoff)
    if not candidates:
        if as_json:
            dump_json({"before": cutoff, "pruned": [], "events": 0, "skipped": []})
        else:
            console.print(f"nothing to prune before {cutoff}")
        return
    if not yes:
        if not sys.stdin.isatty():
            fail(f"{plural(len(candidates), 'run')} would be pruned; add --yes to confirm", 2)
        click.confirm(f"Delete the events of {plural(len(candidates), 'finished run')} (before {cutoff})?", abort=True)
    result = prune(store, cutoff, by=_principal(), private_key=private_key, retention_override=override)
    if as_json:
        dump_json(
            {
                "before": cutoff,
                "events": result.events,
                "skipped": [r.to_dict() for r in result.skipped],
                "pruned": [{"chain": c, "count": n, "head": h} for c, n, h in result.pruned],
            }
        )
    else:
        for r in result.skipped:
            err_console.print(f"[red]skipped[/] (does not verify) {escape(r.describe())}", soft_wrap=True)
        console.print(
            f"pruned {plural(len(result.pruned), 'run')} ({plural(result.events, 'event')}) before {cutoff}; recorded on the system chain"
        )
    if result.skipped:
        sys.exit(10)


@audit.command("export")
@click.option("--run", "run_id", metavar="ID", help="Only this run's chain.")
@click.option("--since", metavar="DATE", help="Only events at or after DATE.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--out", "out", required=True, metavar="DIR", help="An empty (or new) directory.")
@handle_errors
def export_cmd(run_id: str | None, since: str | None, fmt: str, out: str) -> None:
    """Write events and a manifest.json (SHA-256 of each file, chain heads); recorded as
    `audit.exported` on the system chain."""
    cutoff = parse_when(since, option="--since") if since else None
    store = config.get_store(create=False)
    rid = store.find_run(run_id).id if run_id else None
    total = count_events(store, run_id=rid, since=cutoff)
    progress = _bar("exporting") if console.is_terminal and total > 0 else None
    if progress is None:
        manifest = export(store, out, fmt=fmt, run_id=rid, since=cutoff, by=_principal())
    else:
        with progress:
            task = progress.add_task("export", total=total)
            manifest = export(
                store,
                out,
                fmt=fmt,
                run_id=rid,
                since=cutoff,
                by=_principal(),
                on_progress=lambda n: progress.advance(task, n),
            )
    console.print(
        f"exported {plural(manifest['events'], 'event')} of {plural(len(manifest['chains']), 'chain')} to {out} "
        f"({', '.join(f['name'] for f in manifest['files'])} + manifest.json)",
        markup=False,
    )


@audit.command("verify-export")
@click.argument("directory", metavar="DIR")
@click.option(
    "--checkpoint",
    "checkpoint_path",
    metavar="FILE",
    help="Also check the signed checkpoint FILE and that the export extends it.",
)
@click.option(
    "--public-key",
    "public_key_path",
    metavar="PEM",
    help="Pin the checkpoint's signer (the audit key's public half); needs --checkpoint.",
)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def verify_export_cmd(directory: str, checkpoint_path: str | None, public_key_path: str | None, as_json: bool) -> None:
    """Check an export directory offline, with no database: exit 0 if intact, else name each
    problem (exit 10).

    Each file's size and SHA-256 against manifest.json, every event's hash and link recomputed
    as `wflo audit verify` does, and each chain's first and last event against the manifest;
    with --checkpoint, that the export extends the signed checkpoint."""
    if public_key_path and not checkpoint_path:
        raise UserError("--public-key pins a checkpoint's signer: give --checkpoint FILE too")
    doc = read_checkpoint(checkpoint_path) if checkpoint_path else None
    key = load_public_key(public_key_path) if public_key_path else None
    if not Path(directory).is_dir():
        raise UserError(f"{directory} is not a directory (give the directory that holds manifest.json)")
    progress = _bar("verifying") if console.is_terminal and not as_json else None
    if progress is None:
        report = verify_export(directory, checkpoint=doc, public_key=key)
    else:
        with progress:
            task = progress.add_task("verify", total=None)

            def advance(n: int, total: int) -> None:
                progress.update(task, advance=n, total=total)

            report = verify_export(directory, checkpoint=doc, public_key=key, on_progress=advance)
    if as_json:
        dump_json(report.to_dict())
    else:
        _print_export_report(report, checkpoint_path)
    if not report.ok:
        sys.exit(10)


def _print_export_report(report: Any, checkpoint_path: str | None) -> None:
    for p in report.problems:
        err_console.print(f"[red]BROKEN[/] {escape(p.describe())}", soft_wrap=True)
    if report.more_problems:
        err_console.print(f"[red]BROKEN[/] … and {plural(report.more_problems, 'more problem')}", soft_wrap=True)
    broken = [r for r in report.chains if not r.ok]
    for r in broken:
        err_console.print(f"[red]BROKEN[/] {escape(_where_broken(r))}", soft_wrap=True)
    cp = report.checkpoint
    if cp is not None:
        if cp.problem:
            err_console.print(
                f"[red]CHECKPOINT REFUSED[/] {escape(f'{checkpoint_path}: {cp.problem}')}", soft_wrap=True
            )
        for r in cp.reports:
            err_console.print(f"[red]NOT EXTENDED[/] {escape(_where_broken(r))}", soft_wrap=True)
    intact = not report.problems and not report.more_problems and not broken
    what = f"{plural(len(report.chains), 'chain')}, {plural(report.events, 'event')}"
    how = [report.format] if report.format is not None else []
    if any(v is not None for v in report.filters.values()):
        how.append(_filters(report.filters))  # the manifest's word: a forged one shows here
    console.print(
        f"{'[green]intact[/]' if intact else '[red]broken[/]'}: {escape(what)} of {escape(report.path)} "
        f"verified against its manifest{f' ({escape(joined)})' if (joined := ', '.join(how)) else ''}",
        soft_wrap=True,
    )
    if not intact:
        return
    if report.unlisted:
        console.print(
            f"not verified: {', '.join(report.unlisted)} (in the directory, not in the manifest)",
            soft_wrap=True,
            markup=False,
        )
    if report.starts:
        console.print(
            f"{plural(len(report.starts), 'chain')} exported from the middle: each is shown from its first "
            "exported event on; its events before that are not in the export",
            soft_wrap=True,
        )
    for chain, lo, hi in report.holes:
        console.print(
            f"not in the export: {escape(chain)} seq {lo}..{hi} (dated before the --since cut-off); "
            "the links across it are not shown",
            soft_wrap=True,
            markup=False,
        )
    if cp is not None:
        if cp.ok:
            uncovered = (
                f"; {plural(len(report.uncovered), 'signed chain')} not in this export" if report.uncovered else ""
            )
            console.print(
                f"[green]extends checkpoint[/] of {escape(cp.at)}: {plural(cp.chains, 'chain')}, signature valid"
                f"{' (pinned key)' if cp.pinned else ' (key from the file)'}{uncovered}; what was written after it "
                "rests on the export alone",
                soft_wrap=True,
            )
    else:
        console.print(
            "no checkpoint given: an export rewritten whole (events, hashes and manifest recomputed) would verify "
            "too; check it against a signed one with --checkpoint FILE --public-key PEM",
            markup=False,
        )


def _filters(filters: dict[str, Any]) -> str:
    said = [f"--{k} {v}" for k, v in sorted(filters.items()) if v is not None]
    return "exported with " + " ".join(said) if said else "no filter recorded"


@cli.command("report")
@click.option(
    "--since", required=True, metavar="DATE", help="Start of the period (YYYY-MM-DD, ISO time, or an age: 30d)."
)
@click.option("--until", metavar="DATE", help="End of the period (exclusive; default: now).")
@click.option("--format", "fmt", type=click.Choice(["html", "json"]), default="html", show_default=True)
@click.option("--out", "out", metavar="FILE", help="Write here instead of stdout.")
@click.option("--checkpoint", "checkpoint_path", metavar="FILE", help="Also verify against this signed checkpoint.")
@click.option("--public-key", "public_key_path", metavar="PEM", help="Pin the checkpoint's signer.")
@handle_errors
def report_cmd(
    since: str, until: str | None, fmt: str, out: str | None, checkpoint_path: str | None, public_key_path: str | None
) -> None:
    """A compliance report: runs, spend against budgets, approvals, loop stops, budget refusals,
    sandbox denials, configuration changes and the verification result."""
    start = parse_when(since, option="--since")
    end = parse_when(until, option="--until") if until else None
    if end is not None and end <= start:
        raise UserError(f"--until ({until}) must be after --since ({since})")
    doc = read_checkpoint(checkpoint_path) if checkpoint_path else None
    key = load_public_key(public_key_path) if public_key_path else None
    report = build_report(
        config.get_store(create=False), since=start, until=end, checkpoint=doc, public_key=key, by=_principal()
    )
    if fmt == "html":
        text = render_html(report)
    else:
        import json

        text = json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror}") from None
    ok = report["verification"]["ok"]
    console.print(f"report written to {escape(str(out))} (history {'[green]intact[/]' if ok else '[red]BROKEN[/]'})")


def _bar(label: str) -> Any:
    """A transient progress bar on the console: ``label``, the bar, done of total, time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
    )
