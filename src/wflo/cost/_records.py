"""The ledger's limits and usage as the store holds them, for reports (``wflo report``).

Amounts are the stored decimal text, unchanged; ``percent`` is spent over the limit.
"""

from __future__ import annotations

from typing import Any

from ..store import Store
from . import _tables
from ._spend import usd_of


def budget_records(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every limit (``limits``: scope, limit, period, who changed it last and when) and every
    period of every scope the ledger charged (``usage``: limit, spent, reserved, percent)."""
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
        for scope, start, lim, spent, reserved in _tables.usage_records(store)
    ]
    return {"limits": limits, "usage": usage}
