"""Approval requests with their votes, for reports (``wflo report``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..store import Store, parse_iso
from . import _tables


def approval_records(store: Store, since: str, until: str) -> list[dict[str, Any]]:
    """The requests created in ``[since, until)`` (store time text), oldest first, each with
    who asked and decided, how long the decision took (``latency_s``) and every vote."""
    votes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for aid, principal, decision, reason, via, at in _tables.votes_on_requests_created(store, since, until):
        votes[aid].append({"principal": principal, "decision": decision, "reason": reason, "via": via, "at": at})
    return [
        {
            "id": aid,
            "run_id": run_id,
            "tool": tool,
            "message": message,
            "status": status,
            "requested_by": requested_by,
            "decided_by": decided_by,
            "created_at": created,
            "decided_at": decided,
            "latency_s": _latency(created, decided),
            "reason": reason,
            "via": via,
            "votes": votes.get(aid, []),
        }
        for aid, run_id, tool, message, status, requested_by, decided_by, created, decided, reason, via in (
            _tables.requests_created(store, since, until)
        )
    ]


def _latency(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return round((parse_iso(end) - parse_iso(start)).total_seconds(), 3)
    except ValueError:
        return None
