"""``wflo.init()``: two-line mode. Every LLM call of the process is guarded and recorded."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Any

from . import _config
from ._runtime import runtime
from ._scope import check_name, check_tenant
from .cost import Budget
from .engine import RunContext, RunHandle, process_owner
from .engine._executor import guards_for
from .engine._heartbeat import heartbeats
from .integrations import _http
from .store import NewEvent

_lock = threading.Lock()
_ctx: RunContext | None = None


def init(
    *,
    budget_usd: Any = None,
    database: str | None = None,
    tenant: str | None = None,
    name: str | None = None,
    otel: bool = False,
) -> RunHandle:
    """Guard and record every LLM call this process makes, with no decorator.

    Creates one implicit run for the process (named after the script, or ``name``); each
    call made outside a ``@wflo.workflow`` is journaled in it and passes the guard chain
    (budget ``budget_usd`` for the whole process, plus any ``wflo.budgets`` limits). The run
    ends ``succeeded`` when the process exits normally, ``failed`` on an uncaught exception.

    ``otel=True`` also exports every run as OpenTelemetry spans (needs ``wflo[otel]``; see
    the observability docs).

    Returns the run's handle (``wflo runs show <id>`` shows every call and its cost).
    """
    global _ctx
    # Checked before anything is configured or created (name=5 was stored as the run's
    # workflow; a tenant with ':' or a NUL as its tenant).
    if tenant is not None:
        check_tenant(tenant, "wflo.init(tenant=...)")
    if name is not None:
        check_name(name, "wflo.init(name=...)", colon=True)
    budget = None if budget_usd is None else Budget(usd=budget_usd)
    with _lock:
        if database is not None:
            _config.configure(database=database)
        rt = runtime()
        rt.intercept()
        if otel:
            from . import observability

            observability.enable()  # before atexit.register(_finish): the spans flush after the run ends
        if _ctx is not None:
            return RunHandle(_ctx.run_id, _ctx.store)
        store = rt.store
        script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        options: dict[str, Any] = {"serializer": "json", "implicit": True}
        if budget is not None:
            options.update(budget.to_run_options())
        from .store import new_id

        sent_at = time.monotonic()  # the new run's lease is counted from here
        record, _ = store.create_run(
            run_id=new_id(), workflow=name or f"init:{script}", input={"argv": sys.argv[1:]},
            options=options, tenant=tenant, owner=process_owner(), lease_seconds=rt.settings.lease_seconds,
        )  # fmt: skip
        ctx = RunContext.load(store, record, process_owner(), guards_for(rt, None, record, store), runtime=rt)
        ctx.lease_renewed(sent_at)
        heartbeats.track(store, ctx.owner, ctx)
        _ctx = ctx
        _http.implicit_run = lambda: _ctx
        atexit.register(_finish)
        return RunHandle(record.id, store)


def _finish() -> None:
    global _ctx
    with _lock:
        ctx, _ctx = _ctx, None
        _http.implicit_run = None
    if ctx is None:
        return
    heartbeats.untrack(ctx)
    error = getattr(sys, "last_value", None)
    ctx.close()
    ctx.end_open()  # a stream the script left unread: recorded and settled before the run's end
    try:
        if error is not None:
            err = {"type": type(error).__name__, "message": str(error)}
            ctx.append([NewEvent("run.failed", {"error": err})], status="failed", error=err, finish=True)
        else:
            ctx.append([NewEvent("run.completed", {"output": None})], status="succeeded", output=None, finish=True)
    except Exception:
        return
    from . import observability

    observability.run_finished(ctx.store, ctx.run_id)
