"""Spend read back from the journal: LLM calls grouped by model, workflow, tenant, day or run
(priced tool calls count too, under ``tool:NAME``).

The budget ledger holds running totals per limited scope; what was spent on which model, by
which workflow, on which day, is in the runs' chains (each ``call.completed`` event carries
its model, usage and ``cost_usd``). Calls whose outcome was lost are charged at their
reservation and counted as *estimated*. Read-only: nothing here writes to the store.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .._errors import UserError
from ..store import Store
from ._ledger import usd_str

GROUPS = ("model", "workflow", "tenant", "day", "hour", "run")


@dataclass(frozen=True, slots=True)
class Charge:
    """One LLM call's cost, with where it belongs."""

    at: str
    model: str
    usd: Decimal
    estimated: bool
    input_tokens: int
    output_tokens: int
    run_id: str
    workflow: str
    tenant: str | None

    def key(self, group: str) -> str:
        return {
            "model": self.model, "workflow": self.workflow, "tenant": self.tenant or "-", "day": self.at[:10],
            "hour": self.at[:13] + ":00", "run": self.run_id,
        }[group]  # fmt: skip


def charges(
    store: Store, *, since: str | None = None, until: str | None = None, tenant: str | None = None
) -> Iterator[Charge]:
    """Every charged LLM call in ``[since, until)`` (store time text), of ``tenant``'s runs if given."""
    where, params = _window("e.at", since, until, tenant)
    types = "e.type IN ('call.completed', 'call.failed', 'budget.unknown_outcome')"
    # Only the few fields summed here leave the database (an event also holds the answer).
    fields = ", ".join(_field(store, f) for f in _FIELDS)
    try:
        rows = store.read(
            f"SELECT e.at, {fields}, r.workflow, r.tenant, r.id FROM events e JOIN runs r ON r.id = e.chain "
            f"WHERE {types}{where}",
            params,
        )
    except Exception:  # a damaged event (not JSON) fails the database's parse: read them one by one
        rows = [
            (at, *_fields_of(data), workflow, run_tenant, run_id)
            for at, data, workflow, run_tenant, run_id in store.read(
                f"SELECT e.at, e.data, r.workflow, r.tenant, r.id FROM events e JOIN runs r ON r.id = e.chain "
                f"WHERE {types}{where}",
                params,
            )
        ]
    for at, kind, name, cost, estimated, error, tokens_in, tokens_out, workflow, run_tenant, run_id in rows:
        # A failed call counts only when it was charged (an answer lost after sending).
        if kind not in ("llm", "tool") or (error and not cost) or (kind == "tool" and not _usd(cost)):
            continue
        yield Charge(
            at=at, model=str(name or "?") if kind == "llm" else f"tool:{name}", usd=_usd(cost),
            estimated=_true(estimated), input_tokens=_int(tokens_in), output_tokens=_int(tokens_out), run_id=run_id,
            workflow=workflow, tenant=run_tenant,
        )  # fmt: skip
    # Calls a dead process left in flight, charged at their reservation and not yet journaled.
    where, params = _window("u.created_at", since, until, tenant)
    lost = (
        "SELECT u.created_at, u.model, u.amount_usd, r.workflow, r.tenant, r.id FROM budget_unknown u "
        "JOIN runs r ON r.id = u.run_id WHERE u.recorded = 0 AND u.actual_usd IS NULL" + where
    )
    for at, model, amount, workflow, run_tenant, run_id in store.read(lost, params):
        yield Charge(at, str(model or "?"), _usd(amount), True, 0, 0, run_id, workflow, run_tenant)


def spend(
    store: Store,
    group: str,
    *,
    since: str | None = None,
    until: str | None = None,
    tenant: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Totals per ``group`` key (most spent first; by time for ``day`` and ``hour``), and overall.

    ``split`` breaks each row's spend down by a second grouping (``day`` by ``model``: spend
    over time per model). Amounts are decimal strings.
    """
    for name, value in (("group", group), ("split", split)):
        if value is not None and value not in GROUPS:
            raise UserError(f"{name} must be one of {', '.join(GROUPS)}, got {value!r}")
    rows: dict[str, _Totals] = defaultdict(_Totals)
    total = _Totals()
    for c in charges(store, since=since, until=until, tenant=tenant):
        rows[c.key(group)].add(c, split)
        total.add(c, None)
    ordered = sorted(
        rows.items(), key=(lambda kv: kv[0]) if group in ("day", "hour") else (lambda kv: (-kv[1].usd, kv[0]))
    )
    return {
        "group": group, "split": split, "since": since, "until": until, "tenant": tenant,
        "rows": [{"key": k, **v.to_dict()} for k, v in ordered], "total": total.to_dict(),
    }  # fmt: skip


def top_runs(
    store: Store, *, since: str | None = None, until: str | None = None, tenant: str | None = None, limit: int = 10
) -> list[dict[str, Any]]:
    """The runs that spent most in the window, with their workflow, tenant, status and calls."""
    per_run: dict[str, _Totals] = defaultdict(_Totals)
    for c in charges(store, since=since, until=until, tenant=tenant):
        per_run[c.run_id].add(c, "model")
    best = sorted(per_run.items(), key=lambda kv: (-kv[1].usd, kv[0]))[: max(1, min(limit, 500))]
    if not best:
        return []
    marks = ", ".join("?" for _ in best)
    info = {
        r[0]: r[1:]
        for r in store.read(
            f"SELECT id, workflow, tenant, status, created_at FROM runs WHERE id IN ({marks})", [k for k, _ in best]
        )
    }
    out = []
    for run_id, totals in best:
        workflow, run_tenant, status, created_at = info.get(run_id, (None, None, None, None))
        out.append({
            "run_id": run_id, "workflow": workflow, "tenant": run_tenant, "status": status, "created_at": created_at,
            **totals.to_dict(),
        })  # fmt: skip
    return out


class _Totals:
    __slots__ = ("calls", "estimated", "input_tokens", "output_tokens", "parts", "usd")

    def __init__(self) -> None:
        self.calls = 0
        self.usd = Decimal(0)
        self.estimated = Decimal(0)
        self.input_tokens = 0
        self.output_tokens = 0
        self.parts: dict[str, Decimal] = {}

    def add(self, c: Charge, split: str | None) -> None:
        self.calls += 1
        self.usd += c.usd
        if c.estimated:
            self.estimated += c.usd
        self.input_tokens += c.input_tokens
        self.output_tokens += c.output_tokens
        if split:
            key = c.key(split)
            self.parts[key] = self.parts.get(key, Decimal(0)) + c.usd

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cost_usd": usd_str(self.usd), "calls": self.calls, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "estimated_usd": usd_str(self.estimated),
        }  # fmt: skip
        if self.parts:
            out["split"] = {k: usd_str(v) for k, v in sorted(self.parts.items(), key=lambda kv: (-kv[1], kv[0]))}
        return out


_FIELDS = ("kind", "name", "cost_usd", "cost_estimated", "error", "usage.input_tokens", "usage.output_tokens")


def _field(store: Store, path: str) -> str:
    """A field of the event's JSON ``data`` as text, extracted by the database."""
    if store.dialect == "postgresql":
        return "(e.data::jsonb) #>> '{" + path.replace(".", ",") + "}'"
    return f"json_extract(e.data, '$.{path}')"


def _fields_of(data_json: str) -> tuple[Any, ...]:
    """``_FIELDS`` of one event's data, read here (``None`` each for a damaged event)."""
    try:
        data = json.loads(data_json)
    except ValueError:
        data = None
    out = []
    for path in _FIELDS:
        value: Any = data
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out.append(value)
    return tuple(out)


def _true(value: Any) -> bool:
    return value not in (None, 0, "0", "false", False, "")


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _window(column: str, since: str | None, until: str | None, tenant: str | None) -> tuple[str, list[Any]]:
    where, params = "", []
    if since:
        where += f" AND {column} >= ?"
        params.append(since)
    if until:
        where += f" AND {column} < ?"
        params.append(until)
    if tenant:
        where += " AND r.tenant = ?"
        params.append(tenant)
    return where, params


def _usd(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except ArithmeticError:
        return Decimal(0)
