"""The default wiring of a runtime: the guard chain of a run and the engine's hooks.

``wflo.config.Runtime`` calls these; nothing here runs at import (the engine knows none of
these layers by name, and importing ``wflo`` registers nothing). The guard order is decided
here, and only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .approvals import ApprovalGuard, Inbox
from .audit._content import PAYLOADS_KEPT, ContentGuard, drop_payloads
from .cost._guard import BudgetGuard
from .cost._ledger import Budget, Ledger
from .engine import Guard, RunContext
from .guards import LoopGuard, LoopGuardGuard, PolicyGuard

if TYPE_CHECKING:
    from ._runtime import Runtime
    from .store import NewEvent, RunRecord, Store, StoreOp


def run_guards(rt: Runtime, record: RunRecord, store: Store) -> list[Guard]:
    """A run's guards, on ``store``, with ``rt``'s settings, prices and policies."""
    cfg = rt.settings
    opts = record.options.get("budget")
    budget = Budget(**opts) if isinstance(opts, dict) else None
    requester = record.options.get("started_by") or cfg.principal
    loop_opts = record.options.get("loop_guard")
    # Order matters: a call waits for its approval before it takes a rate-limit turn, and both
    # before any money is reserved for it.
    guards: list[Guard] = [ContentGuard(cfg.content)]  # first: its after() runs last
    if loop_opts is not False:
        loop = LoopGuard(**loop_opts) if isinstance(loop_opts, dict) else LoopGuard()
        on_loop = record.options.get("on_loop", "stop")
        guards.append(LoopGuardGuard(loop, run_id=record.id, created_at=record.created_at, on_loop=on_loop))
    guards.append(ApprovalGuard(Inbox(store), requested_by=requester))
    guards.append(PolicyGuard(rt.policies))  # breakers and shared rate limits
    guards.append(
        BudgetGuard(
            Ledger(store),
            run_id=record.id,
            workflow=record.workflow,
            tenant=record.tenant,
            budget=budget,
            prices=rt.prices,
        )
    )
    return guards


def finish_ops(rt: Runtime, store: Store, run_id: str, status: str, *, run: RunContext | None = None) -> list[StoreOp]:
    # A run's first execution, begun by its creator, that kept no payload has none to drop:
    # its end is then the append alone, one statement (issue 20: an empty workflow's cost).
    if run is not None and run.fresh and not run.state.get(PAYLOADS_KEPT):
        return []
    op = drop_payloads(store, run_id, status)
    return [op] if op is not None else []


def resume_reads(rt: Runtime, store: Store, run_id: str) -> list[tuple[str, tuple[Any, ...]]]:
    return [Ledger(store).orphans_read(run_id)]


def resume_ops(rt: Runtime, store: Store, run_id: str) -> tuple[list[NewEvent], list[StoreOp]]:
    events, op = Ledger(store).orphans(run_id)
    return events, [op] if op is not None else []


def cancelled(rt: Runtime, store: Store, run_id: str) -> None:
    # A cancelled run will never run the action: its pending requests close, on the record.
    Inbox(store).close_for_run(run_id, by=rt.settings.principal, reason="its run was cancelled")
