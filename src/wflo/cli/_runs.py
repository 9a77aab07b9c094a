"""``wflo runs …`` and ``wflo run``: list, inspect, resume and cancel runs; start one."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.markup import escape
from rich.text import Text

from .. import config
from ..cost import Ledger
from ..engine import RunHandle, get_workflow, owner_is_dead_here, resume
from ..errors import RunSuspended, UserError, WfloError, exit_code_for
from ..store import RUN_STATUSES, RunRecord, new_id
from ._app import INTERRUPTED, Table, cli, console, dump_json, err_console, fail, handle_errors, import_modules

_STATUS_STYLE = {
    "succeeded": "green", "failed": "red", "cancelled": "yellow", "stopped": "magenta",
    "running": "cyan", "waiting": "blue", "queued": "white", "blocked": "bold red",
}  # fmt: skip


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _run_json(r: RunRecord) -> dict[str, Any]:
    return {
        "id": r.id, "workflow": r.workflow, "status": r.status, "created_at": r.created_at,
        "updated_at": r.updated_at, "finished_at": r.finished_at, "attempts": r.attempts,
        "tenant": r.tenant, "parent_id": r.parent_id, "input": r.input, "output": r.output,
        "error": r.error, "lease_owner": r.lease_owner, "events": r.last_seq,
    }  # fmt: skip


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


@cli.group()
def runs() -> None:
    """List, inspect, resume and cancel runs."""


@runs.command("list")
@click.option("--status", type=click.Choice(RUN_STATUSES), help="Only runs in this status.")
@click.option("--workflow", "-w", help="Only runs of this workflow.")
@click.option("--limit", "-n", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def runs_list(status: str | None, workflow: str | None, limit: int, as_json: bool) -> None:
    """List recent runs, newest first."""
    records = config.get_store(create=False).list_runs(status=status, workflow=workflow, limit=limit)
    if as_json:
        dump_json([_run_json(r) for r in records])
        return
    if not records:
        console.print("no runs")
        return
    table = Table(box=None, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=36)
    for col in ("workflow", "status", "created", "events", "error"):
        table.add_column(col)
    for r in records:
        err = (r.error or {}).get("message", "") if r.error else ""
        table.add_row(
            r.id,
            r.workflow,
            Text.from_markup(_status(r.status)),
            r.created_at[:19].replace("T", " "),
            str(r.last_seq),
            _short(err, 50),
        )
    console.print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run and its events as JSON.")
@handle_errors
def runs_show(run_id: str, as_json: bool) -> None:
    """Show a run: status, input, output or error, and each step with its duration."""
    store = config.get_store(create=False)
    r = store.find_run(run_id)
    events = store.events(r.id)
    if as_json:
        data = _run_json(r)
        data["events"] = [{"seq": e.seq, "type": e.type, "at": e.at, "data": e.data, "hash": e.hash} for e in events]
        dump_json(data)
        return
    console.print(f"[bold]run[/] {escape(r.id)}  {_status(r.status)}")
    console.print(f"workflow  {r.workflow}", markup=False)
    console.print(
        f"created   {r.created_at}   attempts {r.attempts}" + (f"   finished {r.finished_at}" if r.finished_at else "")
    )
    if r.tenant:
        console.print(f"tenant    {r.tenant}", markup=False)
    if r.parent_id:
        console.print(f"parent    {r.parent_id}", markup=False)
    if r.lease_owner and not r.done:
        dead = " (dead: resumable now)" if owner_is_dead_here(r.lease_owner) else ""
        console.print(f"held by   {r.lease_owner} until {r.lease_expires_at}{dead}", markup=False)
    console.print(f"input     {_short(r.input, 100)}", markup=False)
    if r.status == "succeeded":
        console.print(f"output    {_short(r.output, 100)}", markup=False)
    if r.error:
        console.print(f"[red]error[/]     {escape(str(r.error.get('type')))}: {escape(str(r.error.get('message')))}")
    if r.status == "blocked":
        blocked = next((e.data for e in reversed(events) if e.type == "run.blocked"), {})
        err = blocked.get("error") or {}
        why = f"{blocked.get('reason', '?')}: {err.get('type', '')}: {err.get('message', '')}"
        console.print(f"[bold red]blocked[/]   {escape(why)}", soft_wrap=True)
        console.print(f"fix       {blocked.get('fix', '')}", soft_wrap=True, markup=False)
    table = Table(box=None, header_style="bold", title="journal", title_justify="left")
    for col in ("seq", "at", "event", "call", "name", "ms", "detail"):
        table.add_column(col)
    for e in events:
        d = e.data
        if e.type.startswith("call."):
            detail = d.get("error", {}).get("message", "") if "error" in d else _short(d.get("output"), 40)
            if d.get("cost_usd"):
                est = f" (estimate: {d['unknown_outcome']})" if d.get("unknown_outcome") else ""
                detail = f"${d['cost_usd']}{est} " + detail
            row = (d.get("call", ""), d.get("name", ""), str(d.get("ms", "")), detail)
        elif e.type == "budget.unknown_outcome":
            detail = f"${d.get('cost_usd')} (estimate: {d.get('unknown_outcome')}, charged at its reservation)"
            row = (d.get("call") or "", d.get("name") or "", "", detail)
        else:
            extra = {k: v for k, v in d.items() if k not in ("input", "output")}
            row = ("", "", "", _short(extra, 60) if extra else "")
        table.add_row(str(e.seq), e.at[11:23], e.type, *row)
    console.print(table)
    # Estimates not yet on the journal (the run's process is gone): the journal above lacks them.
    for u in Ledger(store).unknown_outcomes(r.id):
        if u["recorded"] or u["actual_usd"] is not None:
            continue
        console.print(
            f"call {u['call'] or '?'} ({u['model'] or '?'}): ${u['amount_usd']} charged at its reservation "
            f"(estimate: {u['reason']})"
        )


@runs.command("cancel")
@click.argument("run_id")
@handle_errors
def runs_cancel(run_id: str) -> None:
    """Cancel a run: it stops at its next step boundary (at once if queued or waiting)."""
    store = config.get_store(create=False)
    r = store.find_run(run_id)
    if r.done:
        raise UserError(f"run {r.id} already ended ({r.status})")
    status = RunHandle(r.id, store).cancel()
    console.print(f"run {escape(r.id)}: cancel requested; status {_status(status)}")


@runs.command("resume")
@click.argument("run_id")
@click.option("--import", "-i", "modules", multiple=True, metavar="MODULE_OR_FILE",
              help="Module (myapp.agents) or file (path/to/script.py) defining the workflow; repeatable.")  # fmt: skip
@click.option("--no-wait", is_flag=True,
              help="If the run reaches a wait (an approval), print how to decide and exit 11 instead of waiting.")  # fmt: skip
@handle_errors
def runs_resume(run_id: str, modules: tuple[str, ...], no_wait: bool) -> None:
    """Resume an interrupted or blocked run in this process (finished steps are replayed, not re-run).

    Exit status: 0 finished, 6 the run failed, 11 it waits (--no-wait), 12 the code is not the
    code that started it (the run stays blocked), 130 interrupted (Ctrl-C).
    """
    import_modules(modules)
    store = config.get_store(create=False)
    r = store.find_run(run_id)
    if r.done:
        raise UserError(f"run {r.id} already ended ({r.status}); nothing to resume")
    get_workflow(r.workflow)
    console.print(f"resuming run {r.id} ({r.workflow}) …", markup=False)
    try:
        value = resume(r.id, wait=not no_wait)
    except RunSuspended as pause:
        _print_waiting(r.id, pause)
        sys.exit(exit_code_for(pause))
    except KeyboardInterrupt:
        _interrupted(r.id, modules)
    except Exception as exc:
        r = store.get_run(r.id)
        console.print(f"run {escape(r.id)}: {_status(r.status)}")
        if isinstance(exc, WfloError):
            raise
        _run_failed(r.id, exc)
    console.print(f"run {escape(r.id)}: {_status('succeeded')}")
    dump_json(value)


def _print_waiting(run_id: str, pause: RunSuspended) -> None:
    wait = pause.wait or {}
    err_console.print(f"run {run_id} is waiting: {pause.reason}", soft_wrap=True, markup=False)
    if wait.get("approval_id"):
        aid = wait["approval_id"]
        err_console.print(
            f"decide with `wflo approve {aid}` or `wflo reject {aid} --reason ...`; a worker "
            f"(or `wflo runs resume {run_id}`) continues it",
            soft_wrap=True,
            markup=False,
        )


def _interrupted(run_id: str, modules: tuple[str, ...]) -> None:
    """Ctrl-C: the run is not lost (finished steps are journaled); say how to go on. Exit 130."""
    imports = " ".join(f"--import {m}" for m in modules) or "--import MODULE"
    err_console.print(
        f"interrupted; run {run_id} is kept: resume it with `wflo runs resume {run_id} {imports}`",
        soft_wrap=True,
        markup=False,
    )
    sys.exit(INTERRUPTED)


def _parse_input(text: str | None) -> tuple[list[Any], dict[str, Any]]:
    if text is None:
        return [], {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--input is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    if isinstance(value, dict):
        return [], value
    if isinstance(value, list):
        return value, {}
    return [value], {}


@cli.command("run")
@click.argument("target", metavar="MODULE:FUNCTION")
@click.option("--input", "input_json", metavar="JSON",
              help="Arguments: a JSON object (keyword args), array (positional) or a single value.")  # fmt: skip
@click.option("--id", "run_id", help="Run id (idempotency key): an existing run with this id is resumed or returned.")
@click.option("--start", "enqueue", is_flag=True, help="Only enqueue for a worker; print the run id.")
@handle_errors
def run_cmd(target: str, input_json: str | None, run_id: str | None, enqueue: bool) -> None:
    """Run a workflow: `wflo run myapp.agents:research --input '{"topic": "otters"}'`."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise UserError(f"{target!r} is not MODULE:FUNCTION (e.g. myapp.agents:research)")
    import_modules((module,))
    import importlib

    wf = getattr(importlib.import_module(module), attr, None)
    from ..engine import Workflow

    if not isinstance(wf, Workflow):
        raise UserError(f"{target} is not a @wflo.workflow")
    args, kwargs = _parse_input(input_json)
    wf.check_inputs(tuple(args), kwargs)  # before any run exists: a mistake leaves nothing behind
    run_id = run_id or new_id()  # known here, so an interrupted run can be named
    bound = wf.options(id=run_id)
    if enqueue:
        handle = bound.start(*args, **kwargs)
        console.print(handle.id, markup=False)
        return
    try:
        value = bound.run(*args, **kwargs)
    except KeyboardInterrupt:
        _interrupted(run_id, (module,))
    except WfloError:
        raise
    except Exception as exc:
        _run_failed(run_id, exc)
    dump_json(value)


def _run_failed(run_id: str, exc: Exception) -> None:
    """The workflow's own code raised: the run is recorded failed; say so in one line (exit 6).

    ``WFLO_DEBUG=1`` shows the traceback; `wflo runs show ID` shows the journal."""
    if os.environ.get("WFLO_DEBUG"):
        raise exc
    message = " ".join(str(exc).split())
    fail(f"run {run_id} failed: {type(exc).__name__}: {message} (wflo runs show {run_id})", 6)
