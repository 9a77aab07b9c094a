"""The runs list: filters, keyset pages on ``(created_at, id)``, and the cost of a run.

A page is one indexed range read (migration ``m010_runs_list_indexes``): newest first, the next
page starting strictly after the last row of this one. The cursor is that row's ``(created_at,
id)``, base64-encoded so clients treat it as opaque. ``OFFSET`` is never used: page 2,000 costs
what page 1 costs, and a run created while someone pages does not shift the pages.

A run's cost is what the ledger charged it: its rows of the spend book summed (``wflo.cost.
run_spend``, the ``run`` grouping of ``wflo costs``), a few indexed rows per run however long
its journal. A filter on it is evaluated in SQL, the displayed figure in exact decimals.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from ..audit import parse_when
from ..cost import run_spend, run_spend_sql, usd_str
from ..errors import UserError
from ..store import RUN_STATUSES, Store

MAX_LIMIT = 500
SCAN_WINDOW = 5_000
"""Runs a page with a text or cost filter reads at most (see ``list_runs``)."""
DEFAULT_LIMIT = 50
MAX_COST = Decimal(10**15)
"""The largest ``min_cost_usd`` (PostgreSQL's NUMERIC overflows far beyond it, at 131,072 digits)."""
FILTER_KEYS = ("workflow", "status", "tenant", "since", "until", "min_cost_usd", "q")

LIST_COLUMNS = (
    "id, workflow, status, tenant, parent_id, created_at, updated_at, finished_at, attempts, last_seq, "
    "cancel_requested, error"
)


class FilterError(UserError):
    """A filter the caller got wrong (the API answers 422 with this message)."""


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs a list (or a bulk action) is about; every field optional."""

    workflows: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    tenant: str | None = None
    since: str | None = None
    """Created at or after (the store's UTC text form)."""
    until: str | None = None
    """Created before."""
    min_cost_usd: Decimal | None = None
    q: str | None = None
    """Text in the id, the workflow's name or the error."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> RunFilter:
        """From query parameters or a JSON object; a wrong value raises ``FilterError``."""
        unknown = sorted(set(raw) - set(FILTER_KEYS))
        if unknown:
            raise FilterError(f"unknown filter {', '.join(unknown)}: use {', '.join(FILTER_KEYS)}")

        def text(key: str) -> str | None:
            value = raw.get(key)
            if value is None:
                return None
            if not isinstance(value, str):
                raise FilterError(f"{key} must be text, got {value!r}")
            return value.strip() or None

        statuses = _split(text("status"))
        bad = [s for s in statuses if s not in RUN_STATUSES]
        if bad:
            raise FilterError(f"unknown status {', '.join(bad)}: use one or more of {', '.join(RUN_STATUSES)}")
        since, until = text("since"), text("until")
        try:
            since_at = parse_when(since, option="since") if since else None
            until_at = parse_when(until, option="until") if until else None
        except UserError as exc:
            raise FilterError(str(exc)) from None
        cost = (
            text("min_cost_usd") if not isinstance(raw.get("min_cost_usd"), int | float) else str(raw["min_cost_usd"])
        )
        min_cost = None
        if cost is not None:
            try:
                min_cost = Decimal(cost)
            except InvalidOperation:
                min_cost = None
            if min_cost is None or not min_cost.is_finite() or not 0 <= min_cost <= MAX_COST:
                raise FilterError(f"min_cost_usd must be a number of US dollars from 0 to {MAX_COST}, got {cost!r}")
        q = text("q")
        if q is not None and len(q) > 200:
            raise FilterError("q is at most 200 characters")
        return cls(_split(text("workflow")), statuses, text("tenant"), since_at, until_at, min_cost, q)

    def to_dict(self) -> dict[str, str]:
        out = {
            "workflow": ",".join(self.workflows), "status": ",".join(self.statuses), "tenant": self.tenant or "",
            "since": self.since or "", "until": self.until or "",
            "min_cost_usd": usd_str(self.min_cost_usd) if self.min_cost_usd is not None else "", "q": self.q or "",
        }  # fmt: skip
        return {k: v for k, v in out.items() if v}


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip())) if value else ()


def encode_cursor(created_at: str, run_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, run_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        # Never NUL: PostgreSQL cannot compare text holding one (a forged cursor was a 500).
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) and "\x00" not in v for v in value):
            return value[0], value[1]
    except (ValueError, binascii.Error, UnicodeDecodeError):
        pass
    raise FilterError("cursor is not one this server gave out (pass next_cursor back unchanged)")


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def where_sql(store: Store, f: RunFilter, *, scans: bool = True) -> tuple[list[str], list[Any]]:
    """The WHERE conditions (on table ``runs``) and their parameters for ``f``; with
    ``scans=False`` only those an index serves (not ``q`` nor ``min_cost_usd``)."""
    where: list[str] = []
    params: list[Any] = []
    for column, values in (("workflow", f.workflows), ("status", f.statuses)):
        if len(values) == 1:
            where.append(f"{column} = ?")
            params.append(values[0])
        elif values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            params += list(values)
    if f.tenant is not None:
        where.append("tenant = ?")
        params.append(f.tenant)
    if f.since is not None:
        where.append("created_at >= ?")
        params.append(f.since)
    if f.until is not None:
        where.append("created_at < ?")
        params.append(f.until)
    scan = scan_sql(store, f) if scans else None
    if scan is not None:
        where.append(scan[0])
        params += scan[1]
    return where, params


def scan_sql(store: Store, f: RunFilter) -> tuple[str, list[Any]] | None:
    """The conditions no index serves (text, cost), as one condition, or ``None``."""
    where: list[str] = []
    params: list[Any] = []
    if f.q is not None:
        like = "ILIKE" if store.dialect == "postgresql" else "LIKE"
        pattern = "%" + f.q.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        where.append(
            f"(id {like} ? ESCAPE '!' OR workflow {like} ? ESCAPE '!' OR COALESCE(error, '') {like} ? ESCAPE '!')"
        )
        params += [pattern] * 3
    if f.min_cost_usd is not None:
        where.append(f"{run_spend_sql(store, 'runs.id')} >= ?")
        params.append(str(f.min_cost_usd) if store.dialect == "postgresql" else float(f.min_cost_usd))
    return (" AND ".join(where), params) if where else None


def list_runs(
    store: Store, f: RunFilter, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of runs, newest first, and the cursor of the next page (``None``: the last).

    A text or cost filter is checked run by run (no index serves it), so such a page reads at
    most ``SCAN_WINDOW`` runs: it may hold fewer than ``limit`` runs and still have a next
    cursor, which goes on searching from where this page stopped."""
    where, params = where_sql(store, f, scans=False)
    if cursor:
        created_at, run_id = decode_cursor(cursor)
        where.append("(created_at, id) < (?, ?)")
        params += [created_at, run_id]
    cond = " WHERE " + " AND ".join(where) if where else ""
    order = " ORDER BY created_at DESC, id DESC LIMIT ?"
    scan = scan_sql(store, f)
    if scan is None:
        rows = store.read(f"SELECT {LIST_COLUMNS} FROM runs{cond}{order}", [*params, limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1][5], rows[-1][0]) if more and rows else None
    else:
        window = store.read(
            f"SELECT id, created_at, CASE WHEN {scan[0]} THEN 1 ELSE 0 END FROM runs{cond}{order}",
            [*scan[1], *params, SCAN_WINDOW],
        )
        hits = [(w[0], w[1]) for w in window if int(w[2])]
        nxt = None
        if len(hits) > limit:
            hits = hits[:limit]
            nxt = encode_cursor(hits[-1][1], hits[-1][0])
        elif len(window) == SCAN_WINDOW:
            nxt = encode_cursor(window[-1][1], window[-1][0])  # searched this far: go on from here
        found = {
            r[0]: r
            for r in _chunked(store, f"SELECT {LIST_COLUMNS} FROM runs WHERE id IN ({{}})", [h[0] for h in hits])
        }
        rows = [found[h[0]] for h in hits if h[0] in found]
    costs = run_spend(store, [r[0] for r in rows])
    items = [_item(r, costs.get(r[0], Decimal(0))) for r in rows]
    return items, nxt


def ids_matching(store: Store, f: RunFilter, *, limit: int) -> list[tuple[str, str | None, str]]:
    """``(id, tenant, status)`` of up to ``limit`` runs matching ``f`` (bulk actions)."""
    where, params = where_sql(store, f)
    sql = "SELECT id, tenant, status FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    return [(r[0], r[1], r[2]) for r in store.read(sql, [*params, limit])]


def _chunked(store: Store, sql: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), 200):
        chunk = list(ids[start : start + 200])
        rows += store.read(sql.format(", ".join("?" * len(chunk))), chunk)
    return rows


ERROR_LIMIT = 500
"""Characters of an error's message in a list row: a page of 50 runs that each failed with a
megabyte of message stays small (the run's own route has the message whole)."""


def _cut(message: Any) -> Any:
    return message[:ERROR_LIMIT] + "…" if isinstance(message, str) and len(message) > ERROR_LIMIT else message


def _item(r: Sequence[Any], cost: Decimal | None) -> dict[str, Any]:
    """A list row as JSON (``cost``: ``None`` where it was not summed, as in live updates)."""
    error = None
    if r[11]:
        try:
            err = json.loads(r[11])
            error = {"type": err.get("type"), "code": err.get("code"), "message": _cut(err.get("message"))}
        except (ValueError, AttributeError):
            error = {"type": None, "code": None, "message": _cut(str(r[11]))}
    return {
        "id": r[0], "workflow": r[1], "status": r[2], "tenant": r[3], "parent_id": r[4], "created_at": r[5],
        "updated_at": r[6], "finished_at": r[7], "attempts": int(r[8]), "events": int(r[9]),
        "cancel_requested": bool(r[10]), "error": error, "cost_usd": None if cost is None else usd_str(cost),
    }  # fmt: skip
