"""Helpers shared by the sections: parsing events, classifying incidents."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ..store import END_EVENTS, Store

_WINDOW_SQL = "SELECT chain, seq, type, at, data FROM events WHERE at >= ? AND at < ? ORDER BY at, chain, seq"
_IDLE_EVENTS = {*END_EVENTS, "run.waiting"}
INCIDENT_KINDS = (
    "budget_refusals",
    "budget_thresholds",
    "loop_stops",
    "breaker_openings",
    "sandbox_kills",
    "sandbox_refusals",
    "failed_runs",
    "stopped_runs",
)
_ACCESS_PREFIXES = ("principal.", "role.", "token.", "auth.", "login.", "session.", "grant.")


def _load(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dec(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


@functools.lru_cache(maxsize=1 << 16)
def _epoch(text: str) -> float:
    # fromisoformat is C code; strptime (parse_iso) made gap finding the slowest part of a pack.
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _seconds(start: str, end: str) -> float:
    return _epoch(end) - _epoch(start)


def classify(type_: str, data: dict[str, Any]) -> str | None:
    """The incident kind of one event (``INCIDENT_KINDS``), or ``None``."""
    if type_ == "loop.stopped":
        return "loop_stops"
    if type_ == "budget.threshold":
        return "budget_thresholds"
    if type_ == "breaker.transition":
        return "breaker_openings" if data.get("to") == "open" else None
    if type_ == "run.failed":
        return "failed_runs"
    if type_ == "run.stopped":
        return "stopped_runs"
    if type_ == "call.failed" and _obj(data.get("error")).get("code") == "budget_exceeded":
        return "budget_refusals"
    if data.get("kind") == "sandbox" and type_ in ("call.completed", "call.failed"):
        box, out = _obj(data.get("sandbox")), _obj(data.get("output"))
        if box.get("killed_by") or data.get("killed_by") or out.get("killed_by"):
            return "sandbox_kills"
        if type_ == "call.failed":
            return "sandbox_refusals"
    return None


def _slim(data: dict[str, Any]) -> dict[str, Any]:
    """Drop the bulky fields no section reads (LLM answers, tool inputs), so a busy month fits."""
    data.pop("output", None)
    data.pop("input", None)
    return data


class _Events:
    """The period's events, parsed once; every section reads from here."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = [(str(c), int(s), str(t), str(a), _slim(_load(d))) for c, s, t, a, d in rows]

    def of(self, *types: str) -> list[tuple[str, int, str, str, dict[str, Any]]]:
        return [r for r in self.rows if r[2] in types]


def run_info(store: Store, chains: list[str]) -> dict[str, tuple[Any, Any, Any]]:
    """``{run id: (workflow, tenant, agent)}`` for the given chains (the ``runs`` projection;
    the agent is the one a framework integration named in the run's options)."""
    out: dict[str, tuple[Any, Any, Any]] = {}
    for start in range(0, len(chains), 500):
        part = chains[start : start + 500]
        marks = ", ".join("?" * len(part))
        sql = f"SELECT id, workflow, tenant, options FROM runs WHERE id IN ({marks})"
        for i, w, t, options in store.read(sql, part):
            out[str(i)] = (w, t, _load(options).get("agent"))
    return out


def n(count: int, singular: str, plural: str | None = None) -> str:
    """``1 event``, ``2 events``: a count with its noun."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"
