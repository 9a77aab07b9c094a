"""``wflo db …`` and ``wflo worker``."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import click

from .. import config
from ..store import SCHEMA_VERSION, RunRecord, open_store
from ._app import cli, console, handle_errors, import_modules


@cli.group()
def db() -> None:
    """Create, upgrade and check the store's schema."""


@db.command("migrate")
@handle_errors
def db_migrate() -> None:
    """Bring the schema up to date (safe to run while workers run)."""
    store = open_store(config.settings().database, verify=False)
    try:
        applied = store.migrate()
    finally:
        store.close()
    if applied:
        console.print(f"applied {', '.join(applied)}; schema version {SCHEMA_VERSION}")
    else:
        console.print(f"schema is up to date (version {SCHEMA_VERSION})")


@db.command("check")
@handle_errors
def db_check() -> None:
    """Exit 0 if the store is reachable and its schema is this wflo's, else say how to fix it."""
    store = open_store(config.settings().database, verify=False, create=False)
    try:
        version = store.check()
        counts = store.count_runs_by_status()
    finally:
        store.close()
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    console.print(f"ok: {config.settings().database} schema version {version}; {summary}", markup=False)


@db.command("roles")
@click.option("--app", "app", default="wflo_app", show_default=True, help="The application role (workers, server).")
@click.option("--auditor", "auditor", default="wflo_auditor", show_default=True,
              help="The auditor role (verify, checkpoint, prune).")  # fmt: skip
@click.option("--owner", "owner", metavar="ROLE", help="The tables' owner (default: the owner of `events`).")
@click.option("--print", "print_only", is_flag=True, help="Print the SQL instead of running it.")
@click.option("--no-create", is_flag=True, help="Grant to existing roles; create none.")
@handle_errors
def db_roles(app: str, auditor: str, owner: str | None, print_only: bool, no_create: bool) -> None:
    """PostgreSQL: create the application and auditor roles and grant them (run as a superuser).

    The application role may only append to the journal; only the auditor can prune, through a
    function the tables' owner defines. Run after `wflo db migrate`; see docs/deployment.md.
    """
    from ..store import apply_roles, role_statements

    # Never migrates: the owner runs `wflo db migrate`; this only grants on what exists.
    store = open_store(config.settings().database, migrate=False, create=False)
    try:
        if store.dialect != "postgresql":
            apply_roles(store, owner="-", app=app, auditor=auditor)  # raises the SQLite explanation
        if owner is None:
            row = store.read(
                "SELECT tableowner FROM pg_tables WHERE tablename = 'events' AND schemaname = current_schema()"
            )
            owner = str(row[0][0]) if row else "postgres"
        if print_only:
            schema = str(store.read("SELECT current_schema()")[0][0])
            for sql in role_statements(schema=schema, owner=owner, app=app, auditor=auditor, create=not no_create):
                click.echo(sql + ";")
            return
        apply_roles(store, owner=owner, app=app, auditor=auditor, create=not no_create)
    finally:
        store.close()
    console.print(
        f"roles ready: {app} (application: append-only journal), {auditor} (auditor: reads, prunes); "
        f"tables owned by {owner}. Give them passwords or certificates; keep {owner}'s for migrations.",
        soft_wrap=True,
    )


def _wait_for_store(seconds: float) -> None:
    """Open the store, retrying for up to ``seconds`` while it cannot be opened
    (``StoreUnavailableError``: a database still starting beside the worker, a server that
    refuses; each try prints why); the last refusal, and any other error (a schema newer than
    this wflo), are raised as they are."""
    from ..errors import StoreUnavailableError

    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            config.get_store()
            return
        except StoreUnavailableError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            wait = min(delay, left)
            console.print(f"waiting for the store ({exc.detail}); trying again in {wait:.1f} s", soft_wrap=True)
            time.sleep(wait)
            delay = min(delay * 2, 5.0)


@cli.command("worker")
@click.option("--import", "-i", "modules", multiple=True, metavar="MODULE", required=True,
              help="Module(s) whose workflows this worker serves (repeatable).")  # fmt: skip
@click.option("--concurrency", "-c", default=4, show_default=True, type=click.IntRange(1, 1024))
@click.option("--max-runs", type=click.IntRange(1), help="Exit after this many runs.")
@click.option(
    "--idle-exit", type=click.FloatRange(0), metavar="SECONDS", help="Exit after this long with nothing to do."
)
@click.option("--queue", "-Q", "queues", multiple=True, metavar="NAME",
              help="Serve only these declared queues (repeatable), besides runs of no queue; "
              "default: every queue the imported modules declare.")  # fmt: skip
@click.option("--quiet", "-q", is_flag=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve Prometheus metrics (computed from the store) on this port; needs wflo[otel].")  # fmt: skip
@click.option("--store-wait", type=click.FloatRange(0), default=0.0, show_default=True, metavar="SECONDS",
              help="At start, wait this long for a store that cannot be reached yet (a database still starting), "
              "retrying with a line each time, before giving up (exit 4).")  # fmt: skip
@click.option("--grace", type=click.FloatRange(0), default=10.0, show_default=True, metavar="SECONDS",
              help="On SIGTERM/Ctrl-C, how long runs in progress may finish before they are handed back "
              "at their next step for another worker to resume.")  # fmt: skip
@handle_errors
def worker_cmd(
    modules: tuple[str, ...],
    concurrency: int,
    max_runs: int | None,
    idle_exit: float | None,
    quiet: bool,
    metrics_port: int | None = None,
    queues: tuple[str, ...] = (),
    grace: float = 10.0,
    store_wait: float = 0.0,
) -> None:
    """Serve queued runs, and recover the runs of workers that died.

    With --queue, runs of other named queues stay queued for other workers; a name that
    none of the imported modules declares is an error.

    Stopping (SIGTERM or Ctrl-C): no new runs are taken; runs in progress may finish for
    --grace seconds, then each is handed back after the step it is in (its lease released,
    so any worker resumes it at once from its journal). A second signal hands them back at
    once; a third exits at once (a step still in flight is then as after a crash: its run
    resumes elsewhere when its lease lapses).
    """
    import_modules(modules)
    _wait_for_store(store_wait)
    if metrics_port is not None:
        from ..observability import serve_metrics

        serve_metrics(metrics_port)
        if not quiet:
            console.print(f"metrics on http://0.0.0.0:{metrics_port}/metrics")
    from ..engine import Worker, registered_workflows

    names = sorted(registered_workflows())
    if not names:
        from ..errors import UserError

        raise UserError(f"no @wflo.workflow found in {', '.join(modules)}")

    def progress(kind: str, run: RunRecord) -> None:
        if not quiet:
            console.print(f"{kind:8} {run.id} {run.workflow} {run.status}", markup=False)

    worker = Worker(concurrency=concurrency, on_event=progress, queues=list(queues) if queues else None)

    signals = [0]
    timer: list[threading.Timer] = []

    def hand_back() -> None:
        worker.stop(hand_back=True)

    def stop(signum: int, _frame: Any) -> None:
        signals[0] += 1
        if signals[0] == 1:
            console.print(
                f"stopping: no new runs; runs in progress may finish for {grace:g} s, then are handed back "
                "after their current step (signal again: hand them back now)"
            )
            worker.stop()
            timer.append(threading.Timer(grace, hand_back))
            timer[0].daemon = True
            timer[0].start()
        elif signals[0] == 2:
            console.print("handing runs in progress back after their current step (signal again: exit now)")
            hand_back()
        else:
            console.print("exiting now: a run still in a step resumes elsewhere when its lease lapses")
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not quiet:
        served = f", queue(s) {', '.join(worker.queues)}" if worker.queues is not None else ""
        console.print(
            f"wflo worker {worker.owner}: {len(names)} workflow(s){served} on {config.settings().database}",
            markup=False,
        )
    done = worker.run(max_runs=max_runs, idle_timeout=idle_exit)
    for t in timer:
        t.cancel()
    if not quiet:
        back = f", {worker.released} handed back" if worker.released else ""
        console.print(f"worker exiting after {done} run(s){back}")
