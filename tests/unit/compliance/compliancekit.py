"""A scripted month of activity with backdated times, and a small local webhook receiver (SMTP: tests/receivers.py).

The store's clock (``wflo.store._base.now_iso``) is moved for each scripted moment, so every
row the store writes (runs, events, heads) carries that moment, as if it happened then.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from wflo.store import Head, NewEvent, Store
from wflo.store._records import _TIME_FORMAT

MONTH = ("2026-03-01T00:00:00.000000Z", "2026-04-01T00:00:00.000000Z")
PREVIOUS = ("2026-01-29T00:00:00.000000Z", "2026-03-01T00:00:00.000000Z")


def iso(moment: datetime) -> str:
    return moment.strftime(_TIME_FORMAT)


@contextmanager
def clock(moment: datetime) -> Iterator[None]:
    """The store writes everything at ``moment`` (plus the usual offsets) inside this block."""
    import wflo.store._base as base

    def fake(offset_seconds: float = 0.0) -> str:
        return iso(moment + timedelta(seconds=offset_seconds))

    mp = pytest.MonkeyPatch()
    mp.setattr(base, "now_iso", fake)
    try:
        yield
    finally:
        mp.undo()


def _llm(call: str, usd: str) -> NewEvent:
    return NewEvent("call.completed", {
        "call": call, "kind": "llm", "name": "gpt-4o-mini", "provider": "openai", "cost_usd": usd,
        "price_source": "genai-prices", "price_version": "genai-prices 0.2.3",
        "usage": {"input_tokens": 100, "output_tokens": 50},
    })  # fmt: skip


def _run(store: Store, run_id: str, at: datetime, workflow: str,
         body: list[NewEvent], *, end: str = "succeeded", later: list[tuple[datetime, list[NewEvent]]] = ()) -> None:  # type: ignore[assignment]  # fmt: skip
    with clock(at):
        options = {"agent": "billing-bot"} if workflow == "billing" else None  # as wflo.wrap(...) names it
        run, _ = store.create_run(
            run_id=run_id, workflow=workflow, input={}, tenant="acme", owner="w1", options=options
        )
        head = store.append(run_id, Head(run.last_seq, run.last_hash), body, owner="w1")
    for moment, events in later:
        with clock(moment):
            head = store.append(run_id, head, events, owner="w1")
    if end:
        kind = {"succeeded": "run.completed", "failed": "run.failed", "stopped": "run.stopped",
                "cancelled": "run.cancelled"}[end]  # fmt: skip
        last = later[-1][0] if later else at
        with clock(last + timedelta(seconds=2)):
            data = {"by": "user:ops"} if end == "cancelled" else {}
            store.append(run_id, head, [NewEvent(kind, data)], owner="w1", status=end, finish=True)


def scripted_month(store: Store) -> dict[str, Any]:
    """30 days of March 2026 (and a little of February); returns what was scripted, by count."""
    expect: dict[str, Any] = {
        "runs": 0, "llm_calls": 0, "usd": "0", "loop_stops": 0, "budget_refusals": 0, "failed_runs": 0,
        "approved": 0, "rejected": 0, "edited": 0, "timed_out": 0, "requests": 0, "breaker_openings": 1,
        "sandbox_kills": 1, "cancellations": 1, "budget_thresholds": 0, "previous_loop_stops": 2, "gaps": 1,
        "grants": 1, "removals": 1,
    }  # fmt: skip
    start = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    with clock(start - timedelta(hours=1)):
        store.append_system(
            [NewEvent("principal.granted", {"principal": "user:ann", "role": "approver", "by": "user:admin"})]
        )
    for day in range(30):
        at = start + timedelta(days=day)
        rid = f"m{day:02d}"
        body = [
            _llm("1", "0.01"),
            NewEvent("call.completed", {"call": "2", "kind": "tool", "name": "search", "output": "ok"}),
        ]
        expect["llm_calls"] += 1
        end = "succeeded"
        later: list[tuple[datetime, list[NewEvent]]] = []
        if day % 7 == 3:
            body.append(NewEvent("call.failed", {"call": "3", "kind": "llm", "name": "gpt-4o-mini", "error": {
                "code": "budget_exceeded", "fields": {"scope": "tenant:acme", "limit": "1", "spent": "0.99", "requested": "0.02"}}}))  # fmt: skip
            expect["budget_refusals"] += 1
        if day % 5 == 0:
            body.append(
                NewEvent("budget.threshold", {"scope": "tenant:acme", "percent": 80, "limit": "1", "spent": "0.8"})
            )
            expect["budget_thresholds"] += 1
        if day % 10 == 5:
            body.append(NewEvent("loop.stopped", {"detector": "max_repeats", "evidence": {"summary": "search x4"}}))
            end = "stopped"
            expect["loop_stops"] += 1
        elif day % 9 == 4:
            end = "failed"
            expect["failed_runs"] += 1
        elif day == 20:
            end = "cancelled"
        if day == 12:
            body.append(
                NewEvent(
                    "breaker.transition", {"target": "api.openai.com", "from": "closed", "to": "open", "failures": 5}
                )
            )
            body.append(NewEvent("breaker.transition", {"target": "api.openai.com", "from": "open", "to": "half_open", "failures": 5}))  # fmt: skip
        if day == 14:
            body.append(NewEvent("call.completed", {"call": "4", "kind": "sandbox", "name": "bwrap",
                                                    "sandbox": {"backend": "bwrap", "killed_by": "wall"}}))  # fmt: skip
        if day == 25:  # a live run silent for 3 hours: a gap
            later.append((at + timedelta(hours=3), [_llm("5", "0.01")]))
            expect["llm_calls"] += 1
        if day == 27:  # a waiting run silent for 8 hours: not a gap
            body.append(NewEvent("run.waiting", {"reason": "timer"}))
            later.append((at + timedelta(hours=8), [NewEvent("run.resumed", {})]))
        if day % 2 == 0:  # an approval
            aid = f"a{day:02d}"
            body.append(NewEvent("approval.requested", {"approval_id": aid, "tool": "refund", "requested_by": "user:bot",
                                                        "action_hash": "h-" + aid}))  # fmt: skip
            expect["requests"] += 1
            kind = (day // 2) % 4
            with clock(at + timedelta(minutes=day + 1)):
                if kind == 3:
                    store.append_system([NewEvent("approval.expired", {"approval_id": aid, "status": "rejected", "by": "policy:timeout", "reason": "timed out"})])  # fmt: skip
                    expect["timed_out"] += 1
                else:
                    status = "rejected" if kind == 1 else "approved"
                    store.append_system([NewEvent("approval.decided", {
                        "approval_id": aid, "run_id": rid, "decision": "reject" if kind == 1 else "approve", "status": status,
                        "by": "user:ann", "via": "cli", "reason": "too much" if kind == 1 else None,
                        "action_hash": ("h-edited-" if kind == 2 else "h-") + aid})])  # fmt: skip
                    expect["rejected" if kind == 1 else "approved"] += 1
                    expect["edited"] += kind == 2
        _run(store, rid, at, "billing" if day % 2 else "support", body, end=end, later=later)
        expect["runs"] += 1
    expect["usd"] = str(Decimal("0.01") * expect["llm_calls"])
    with clock(start + timedelta(days=15)):
        store.append_system(
            [NewEvent("principal.revoked", {"principal": "user:bob", "role": "approver", "by": "user:admin"})]
        )
    for i in range(2):  # February: the previous period
        _run(store, f"feb{i}", datetime(2026, 2, 10 + i, 9, tzinfo=UTC), "support",
             [NewEvent("loop.stopped", {"detector": "max_steps"})], end="stopped")  # fmt: skip
    return expect


class Hook:
    """A webhook receiver on localhost."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
