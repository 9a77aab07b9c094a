"""Connects the layers at import of ``wflo``: the engine knows none of them by name."""

from __future__ import annotations

from typing import Any

from ._config import settings
from .approvals import ApprovalGuard, Inbox, inbox
from .audit._content import ContentGuard, drop_payloads
from .cost._api import ledger
from .cost._guard import BudgetGuard
from .cost._ledger import Budget, Ledger
from .engine import Guard, add_cancel_hook, add_finish_op, add_guard_factory, add_resume_hook
from .guards import LoopGuard, LoopGuardGuard
from .guards._policies import PolicyGuard, policies
from .integrations import _http


def _run_guards(wf: Any, record: Any) -> list[Guard]:
    _http.install()  # idempotent; the first run of a process wraps the HTTP clients
    opts = record.options.get("budget")
    budget = Budget(**opts) if isinstance(opts, dict) else None
    requester = record.options.get("started_by") or settings().principal
    loop_opts = record.options.get("loop_guard")
    loop = LoopGuard(**loop_opts) if isinstance(loop_opts, dict) else LoopGuard()
    # Order matters: a call waits for its approval before it takes a rate-limit turn, and both
    # before any money is reserved for it.
    guards: list[Guard] = [ContentGuard(settings().content)]  # first: its after() runs last
    guards += (
        []
        if loop_opts is False
        else [
            LoopGuardGuard(
                loop, run_id=record.id, created_at=record.created_at, on_loop=record.options.get("on_loop", "stop")
            )
        ]
    )
    guards.append(ApprovalGuard(inbox(), requested_by=requester))
    guards.append(PolicyGuard(policies))  # breakers and shared rate limits (wflo.policies)
    guards.append(
        BudgetGuard(ledger(), run_id=record.id, workflow=record.workflow, tenant=record.tenant, budget=budget)
    )
    return guards


add_guard_factory(_run_guards)
add_finish_op(drop_payloads)


def _close_approvals(store: Any, run_id: str) -> None:
    # A cancelled run will never run the action: its pending requests close, on the record.
    Inbox(store).close_for_run(run_id, by=settings().principal, reason="its run was cancelled")


add_cancel_hook(_close_approvals)

add_resume_hook(lambda store, run_id: Ledger(store).orphans(run_id))
