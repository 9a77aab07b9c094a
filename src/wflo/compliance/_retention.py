"""The retention policy that ``wflo audit prune`` must not break.

``Settings.retention_days`` (default 183, about the six months the EU AI Act Art. 19 asks
deployers and providers to keep logs) is the youngest age a prune may cut at. A prune whose
cut-off is younger is refused with ``RetentionError`` before anything is read, unless the
caller gives an override reason; the override is an ``audit.retention_overridden`` event on
the system chain (who, the cut-off, the policy, the reason), written *before* the deletion,
so even a prune that then fails leaves the attempt on record.

The check compares against the store's clock when it has one (PostgreSQL ``now()``), so a
process with a skewed clock cannot move the boundary.
"""

from __future__ import annotations

from datetime import timedelta

from .._errors import RetentionError, UserError
from ..store import NewEvent, Store, iso, now_iso, parse_iso


def _store_now(store: Store) -> str:
    if store.dialect == "postgresql":
        row = store.read_one("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        if row and row[0]:
            return str(row[0])
    return now_iso()


def earliest_cutoff(store: Store, days: int) -> str:
    """The latest ``before`` a prune may use now: ``days`` ago, in store time text."""
    return iso(parse_iso(_store_now(store)) - timedelta(days=days))


def check_retention(store: Store, before: str, *, by: str, days: int, override: str | None = None) -> None:
    """Refuse a prune cut-off inside the retention period, or record the override.

    Raises ``RetentionError`` when ``before`` is later than ``days`` ago and no ``override``
    reason is given; with one, appends ``audit.retention_overridden`` and returns.
    """
    limit = earliest_cutoff(store, days)
    if before <= limit:
        return
    if override is None:
        raise RetentionError(before=before, earliest=limit, days=days)
    if not override.strip():
        raise UserError("a retention override needs a reason (it is recorded on the system chain)")
    store.append_system(
        [
            NewEvent(
                "audit.retention_overridden",
                {"by": by, "before": before, "earliest_allowed": limit, "retention_days": days, "reason": override},
            )
        ]
    )


def enforce_retention(store: Store, before: str, *, by: str, override: str | None = None) -> None:
    """``check_retention`` with the configured ``retention_days`` (``wflo audit prune``'s check)."""
    from .._config import settings

    check_retention(store, before, by=by, days=settings().retention_days, override=override)
