"""The ledger's limits and usage as the store holds them, for reports (``wflo report``).

Amounts are the stored decimal text, unchanged; ``percent`` is spent over the limit.
"""

from __future__ import annotations

import json
from typing import Any

from ..store import Store
from . import _tables
from ._spend import usd_of


def budget_records(store: Store, *, until: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every limit (``limits``: scope, limit, period, who changed it last and when) and every
    period of every scope the ledger charged (``usage``: limit, spent, reserved, percent), by
    scope then period; ``until`` (store time text): only the periods that start before it."""
    limits = [
        {"scope": s, "limit_usd": lim, "period": p, "updated_at": at, "updated_by": who}
        for s, lim, p, at, who in _tables.limit_records(store)
    ]
    usage = [
        {
            "scope": scope,
            "period_start": start or None,
            "limit_usd": lim,
            "spent_usd": spent,
            "reserved_usd": reserved,
            "percent": round(float(usd_of(spent) / usd_of(lim) * 100), 1) if usd_of(lim) else None,
        }
        for scope, start, lim, spent, reserved in _tables.usage_records(store, until)
    ]
    return {"limits": limits, "usage": usage}


def budget_periods(store: Store, scope: str, *, limit: int = 60) -> list[dict[str, Any]]:
    """A scope's ``limit`` newest periods, newest first: limit, spent, reserved, and the alert
    thresholds already crossed (``alerted``, percents)."""
    return [
        {"scope": scope, "period_start": start, "limit_usd": lim, "spent_usd": spent, "reserved_usd": reserved,
         "alerted": json.loads(alerted)}
        for start, lim, spent, reserved, alerted in _tables.scope_periods(store, scope, limit)
    ]  # fmt: skip


def budget_alerted(store: Store) -> dict[tuple[str, str], list[int]]:
    """The alert thresholds (percents) already crossed, by ``(scope, period_start)``, of every period."""
    return {(scope, start): json.loads(alerted) for scope, start, alerted in _tables.usage_alerted(store)}
