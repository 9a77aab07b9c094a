"""Connects the layers at import of ``wflo``: the engine knows none of them by name."""

from __future__ import annotations

from typing import Any

from ._config import settings
from .approvals import ApprovalGuard, inbox
from .cost._api import ledger
from .cost._guard import BudgetGuard
from .cost._ledger import Budget
from .engine import Guard, add_guard_factory
from .integrations import _http


def _run_guards(wf: Any, record: Any) -> list[Guard]:
    _http.install()  # idempotent; the first run of a process wraps the HTTP clients
    opts = record.options.get("budget")
    budget = Budget(**opts) if isinstance(opts, dict) else None
    requester = record.options.get("started_by") or settings().principal
    # Order matters: a call waits for its approval before any money is reserved for it.
    return [
        ApprovalGuard(inbox(), requested_by=requester),
        BudgetGuard(ledger(), run_id=record.id, workflow=record.workflow, tenant=record.tenant, budget=budget),
    ]


add_guard_factory(_run_guards)
