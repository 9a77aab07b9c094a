"""Runs: list, detail, events, cancel, resume, retry, bulk actions, the live stream, and the
panel's two runs pages (issue 17).

Every route is scoped to the run's tenant: a run of ``acme`` is reachable with a grant on
``tenant:acme`` (or everywhere); a list or stream names its tenant (``?tenant=acme``) unless
the caller's grant is global. The queries live in ``_runs_query`` (list), ``_runs_detail``
(detail and timeline), ``_runs_actions`` (what an operator does) and ``_runs_live`` (SSE).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..auth import GLOBAL, Access, tenant_scope
from ..errors import RunNotFoundError
from ..store import Store
from . import _runs_actions as actions
from ._panel import page_route
from ._routes import Router, tenant_query, who_of
from ._runs_detail import detail, run_json, typed
from ._runs_live import END, Subscriber, Watcher, sse
from ._runs_query import (
    DEFAULT_LIMIT,
    FILTER_KEYS,
    MAX_LIMIT,
    FilterError,
    RunFilter,
    check_limit,
    ids_matching,
    list_runs,
)

EVENTS_MAX = 1000


class BulkBody(BaseModel):
    # A misspelt field (``filters``, ``ids``) must not leave an empty filter: that is every run.
    model_config = ConfigDict(extra="forbid")

    action: Literal["cancel", "resume"]
    filter: dict[str, Any] = Field(default_factory=dict)
    """The list's filters (``status``, ``workflow``, ``tenant``, ``since``, ``until``,
    ``min_cost_usd``, ``q``)."""


async def run_scope(request: Request, access: Access) -> str:
    """The tenant of the run in the path (an unknown run: everywhere, then 404)."""
    return await _tenant_of(access.store, request.path_params["run_id"])


async def _tenant_of(store: Store, run_id: str) -> str:
    rows = await run_in_threadpool(store.read, "SELECT tenant FROM runs WHERE id = ?", (run_id,))
    return tenant_scope(rows[0][0] if rows else None)


async def stream_scope(request: Request, access: Access) -> str:
    run_id = request.query_params.get("run")
    return await _tenant_of(access.store, run_id) if run_id else await tenant_query(request, access)


async def bulk_scope(request: Request, access: Access) -> str:
    """A bulk action reaches the tenant its filter names (none: every tenant, a global grant)."""
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(422, 'the body must be JSON: {"action": "cancel", "filter": {...}}') from None
    flt = body.get("filter") if isinstance(body, dict) else None
    tenant = flt.get("tenant") if isinstance(flt, dict) else None
    return tenant_scope(tenant) if isinstance(tenant, str) and tenant else GLOBAL


def _range(low: int, high: int | None = None) -> Any:
    """The range the endpoint checks itself (its own message), as the OpenAPI document says it."""
    bounds = {"minimum": low} if high is None else {"minimum": low, "maximum": high}
    return Query(json_schema_extra=bounds)


def _filter(raw: dict[str, Any]) -> RunFilter:
    try:
        return RunFilter.parse(raw)
    except FilterError as exc:
        raise HTTPException(422, str(exc)) from None


def register(router: Router) -> None:
    """The runs API under ``/api/v1`` and the ``/runs`` pages."""
    store = router.access.store

    @router.route("GET", "/api/v1/runs", permission="runs:read", scope=tenant_query)
    def runs_list(
        request: Request, limit: Annotated[int, _range(1, MAX_LIMIT)] = DEFAULT_LIMIT, cursor: str | None = None
    ) -> dict[str, Any]:
        """Runs newest first. Filters: ``workflow`` and ``status`` (comma lists), ``tenant``,
        ``since``/``until`` (ISO 8601 or an age like ``2h``), ``min_cost_usd``, ``q`` (text in
        id, workflow or error). Pass ``next_cursor`` back as ``cursor`` for the next page."""
        flt = _filter({k: v for k, v in request.query_params.items() if k in FILTER_KEYS})
        try:
            items, nxt = list_runs(store, flt, limit=check_limit(limit), cursor=cursor)
        except FilterError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"items": items, "next_cursor": nxt}

    @router.route("GET", "/api/v1/runs/{run_id:path}/events", permission="runs:read", scope=run_scope)
    def runs_events(
        request: Request, run_id: str, after: Annotated[int, _range(0)] = 0,
        limit: Annotated[int, _range(1, EVENTS_MAX)] = 200,
    ) -> dict[str, Any]:  # fmt: skip
        """The run's journal after ``after`` as typed timeline items (``kind``: step, llm, tool,
        sandbox, child, budget, loop, breaker, approval, run)."""
        if not 1 <= limit <= EVENTS_MAX or after < 0:
            raise HTTPException(422, f"limit must be between 1 and {EVENTS_MAX} and after >= 0")
        r = store.get_run(run_id)
        # Nothing comes after the head; past it, a number SQLite's INTEGER cannot hold is no error.
        events = store.events(r.id, after_seq=min(after, r.last_seq), limit=limit)
        items = [typed(e) for e in events]
        more = len(items) == limit and items[-1]["seq"] < r.last_seq
        return {"items": items, "next_after": items[-1]["seq"] if more else None, "head": r.last_seq}

    def _act(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except actions.Conflict as exc:
            raise HTTPException(409, str(exc)) from None

    @router.route("POST", "/api/v1/runs/{run_id:path}/cancel", permission="runs:cancel", scope=run_scope)
    def runs_cancel(request: Request, run_id: str) -> dict[str, Any]:
        """Ask the run to stop at its next step boundary (at once when queued or waiting)."""
        return dict(_act(actions.cancel, store, run_id, who_of(request)))

    @router.route("POST", "/api/v1/runs/{run_id:path}/resume", permission="runs:resume", scope=run_scope)
    def runs_resume(request: Request, run_id: str) -> dict[str, Any]:
        """Hand a blocked run back to the workers (after the code or the disk was fixed)."""
        return dict(_act(actions.resume, store, run_id, who_of(request)))

    @router.route(
        "POST", "/api/v1/runs/{run_id:path}/retry", permission="runs:resume", scope=run_scope, status_code=201
    )
    def runs_retry(request: Request, run_id: str) -> dict[str, Any]:
        """Start the run again as a new run (same workflow, input, tenant). With an
        ``Idempotency-Key`` header, sending it twice starts one run."""
        key = request.headers.get("idempotency-key")
        return run_json(_act(actions.retry, store, run_id, who_of(request), key))

    # After the routes below a run's id (``{run_id:path}``: an id may hold "/", as LangGraph's
    # thread ids do), which would otherwise read ".../events" as part of an id.
    @router.route("GET", "/api/v1/runs/{run_id:path}", permission="runs:read", scope=run_scope)
    def runs_get(request: Request, run_id: str) -> dict[str, Any]:
        """A run: its record, cost (spent, reserved, per limited scope), child runs, approvals,
        and whether its hash chain verifies."""
        return detail(store, store.get_run(run_id))

    @router.route("POST", "/api/v1/runs/bulk", permission="runs:cancel", scope=bulk_scope)
    def runs_bulk(request: Request, body: BulkBody) -> dict[str, Any]:
        """Cancel or resume the runs a filter selects (at most 1,000 a request; ``more`` says
        there are others), each only where the caller's grants reach its tenant."""
        flt = _filter(body.filter)
        if body.action == "cancel" and not flt.statuses:
            flt = replace(flt, statuses=("queued", "running", "waiting", "blocked"))
        if body.action == "resume" and not flt.statuses:
            flt = replace(flt, statuses=("blocked",))
        found = ids_matching(store, flt, limit=actions.BULK_LIMIT + 1)
        result = actions.bulk(store, body.action, found[: actions.BULK_LIMIT], who_of(request),
                              more=len(found) > actions.BULK_LIMIT)  # fmt: skip
        return {**result.to_dict(), "filter": flt.to_dict()}

    watcher = Watcher(store)
    router.app.state.runs_watcher = watcher

    @router.route("GET", "/api/v1/stream", permission="runs:read", scope=stream_scope, response_class=StreamingResponse)
    async def stream(
        request: Request, run: str | None = None, tenant: str | None = None, after: int | None = None
    ) -> Any:
        """Server-sent events: with ``run``, that run's new events (after ``after`` or the
        ``Last-Event-ID``; default: from now) and its status; without, every run's status
        changes and every approval (of ``tenant``, if given)."""
        import asyncio

        first: list[dict[str, Any]] = []
        if run is not None:
            if request.headers.get("last-event-id", "").isdigit():  # a reconnect: go on from there
                after = int(request.headers["last-event-id"])
            try:
                r = await run_in_threadpool(store.get_run, run)
            except RunNotFoundError:
                raise HTTPException(404, f"no run with id {run!r}") from None
            start = r.last_seq if after is None else max(0, after)
            sub = Subscriber(asyncio.get_running_loop(), run, after=start)
            if r.done and start >= r.last_seq:  # nothing more will come: say so and end
                first = [{"kind": "run", "run": run_json(r)}, END]
        else:
            sub = Subscriber(asyncio.get_running_loop(), None, tenant=tenant or None)
        return StreamingResponse(
            sse(sub, watcher, first), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    page_route(router, "/runs", "Runs", script="runs.js", body="<div id='runs-page'></div>")
    page_route(router, "/runs/{run_id:path}", "Run", script="run.js", body="<div id='run-page'></div>")
