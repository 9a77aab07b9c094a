"""What an operator does to runs from the server: cancel, resume, retry, and each on a filter.

The server runs no workflow code, so it never executes a run itself: cancel goes through
``RunHandle.cancel`` (as ``wflo runs cancel`` does, recording who asked), resume hands a
``blocked`` run back to the workers (``run.resume_requested`` on its chain, with who and how,
then ``queued``), and retry starts a new run of the same workflow with the same input (its
``run.created`` names the run it retries and who asked). ``wflo runs resume`` instead resumes
a run in the calling process, where the workflow's code is imported.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ..auth import Principal, tenant_scope
from ..engine import RunHandle
from ..errors import LeaseLost, WfloError
from ..store import Head, NewEvent, RunRecord, Store, new_id

BULK_LIMIT = 1000
"""Runs one bulk request acts on at most (``more: true`` says to send it again)."""
_NOT_CARRIED = ("trace_link", "started_by", "retry_of")
"""Options of the original run a retry does not take over."""


class Conflict(WfloError):
    """The run is not in a state the action applies to (HTTP 409)."""

    code = "conflict"


def cancel(store: Store, run_id: str, who: Principal) -> dict[str, Any]:
    r = store.get_run(run_id)
    if r.done:
        if r.status == "cancelled":
            return {"id": r.id, "status": r.status, "cancel_requested": True}  # asked twice: same answer
        raise Conflict(f"run {r.id} already ended ({r.status}); nothing to cancel")
    status = RunHandle(r.id, store).cancel(by=who.id, via=who.via)
    return {"id": r.id, "status": status, "cancel_requested": True}


def resume(store: Store, run_id: str, who: Principal) -> dict[str, Any]:
    """Hand a ``blocked`` run back to the workers; say what happens to a run in another state."""
    r = store.get_run(run_id)
    if r.done:
        raise Conflict(f"run {r.id} already ended ({r.status}); retry starts it again as a new run")
    if r.status == "waiting":
        wait = f" (approval: decide {r.id} in the approvals inbox)" if r.wake_at is None else f" until {r.wake_at}"
        raise Conflict(f"run {r.id} is waiting{wait}; it continues by itself once woken")
    if r.status != "blocked":
        # queued or running: a worker holds it, or takes it when its lease expires.
        return {"id": r.id, "status": r.status, "resumed": False,
                "detail": "a worker runs it (or takes it over once its lease expires)"}  # fmt: skip
    try:
        store.append(
            r.id, Head(r.last_seq, r.last_hash),
            [NewEvent("run.resume_requested", {"by": who.id, "via": who.via, "status_before": r.status})],
            owner=None, status="queued",
        )  # fmt: skip
    except LeaseLost:
        raise Conflict(f"run {r.id} changed while being resumed; look again") from None
    return {"id": r.id, "status": "queued", "resumed": True, "detail": "the next free worker resumes it"}


def retry(store: Store, run_id: str, who: Principal, idempotency_key: str | None = None) -> RunRecord:
    """A new run of the same workflow, input and tenant; the same key gives the same new run."""
    r = store.get_run(run_id)
    if not r.done:
        raise Conflict(f"run {r.id} is {r.status}; cancel it (or let it end) before retrying")
    new = str(uuid.uuid5(uuid.NAMESPACE_URL, f"wflo:retry:{r.id}:{idempotency_key}")) if idempotency_key else new_id()
    options = {k: v for k, v in r.options.items() if k not in _NOT_CARRIED}
    options.update(started_by=who.id, retry_of=r.id)
    record, _ = store.create_run(
        run_id=new, workflow=r.workflow, input=r.input, options=options, tenant=r.tenant,
        event_data={"retry_of": r.id, "by": who.id, "via": who.via},
    )  # fmt: skip
    return record


@dataclass
class BulkResult:
    action: str
    matched: int = 0
    acted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    more: bool = False

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "matched": self.matched, "acted": self.acted, "skipped": self.skipped,
                "more": self.more}  # fmt: skip


def bulk(
    store: Store, action: str, runs: list[tuple[str, str | None, str]], who: Principal, *, more: bool
) -> BulkResult:
    """Act on ``runs`` (``(id, tenant, status)``), each only if the caller's grants cover it."""
    permission = "runs:cancel" if action == "cancel" else "runs:resume"
    out = BulkResult(action, matched=len(runs), more=more)
    for run_id, tenant, status in runs:
        if not who.allowed(permission, tenant_scope(tenant)):
            out.skip("not_allowed")
            continue
        if action == "cancel" and status in ("succeeded", "failed", "cancelled", "stopped"):
            out.skip("ended")
            continue
        if action == "resume" and status != "blocked":
            out.skip("not_blocked")
            continue
        try:
            result = cancel(store, run_id, who) if action == "cancel" else resume(store, run_id, who)
        except Conflict:
            out.skip("changed")
            continue
        if action == "resume" and not result.get("resumed"):
            out.skip("not_blocked")
            continue
        out.acted += 1
    return out
