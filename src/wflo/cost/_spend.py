"""Spend: LLM calls grouped by model, workflow, tenant, day, hour or run (priced tool calls
count too, under ``tool:NAME``).

What the costs API and ``wflo costs`` report is the *spend book* (``ledger_spend``, kept by
``wflo.cost._tables``): every charge the ledger makes is added there, in the transaction that
makes it, to the row of its run and model for the current hour *of the store's clock* (never
the writer's). So the answer is defined as what the ledger charged:

- a call counts once, when its charge is settled (or, lost with its process, when its
  reservation expires or its run resumes: at its reservation, as *estimated*); a real cost
  that arrives after an estimate corrects the estimate's row;
- a pruned run's spend stays (money was spent; ``wflo audit prune`` removes events, not the
  book), so totals do not fall when old journals are pruned;
- windows count whole hours of the store's clock (every hour overlapping ``[since, until)``).

``charges`` reads the same calls back from the runs' journals (each ``call.completed`` event
carries its model, usage and ``cost_usd``): the check of the book, and what migration m017
filled the book from on upgrade. Read-only: nothing here writes to the store.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from .._errors import UserError
from ..store import Store
from . import _tables
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
    """Every charged call in the runs' journals in ``[since, until)`` (store time text), of
    ``tenant``'s runs if given: the journal's view of spend, kept to check the book against
    (and to fill it on upgrade). Pruned runs' calls are gone from it."""
    where, params = _window("e.at", since, until, tenant)
    # Only the few fields summed here leave the database (an event also holds the answer).
    fields = ", ".join(_tables.json_field(store, f) for f in _FIELDS)
    try:
        rows = _tables.journal_rows(store, fields, where, params)
    except Exception:  # a damaged event (not JSON) fails the database's parse: read them one by one
        rows = [
            (at, *_fields_of(data), workflow, run_tenant, run_id)
            for at, data, workflow, run_tenant, run_id in _tables.journal_rows(store, "e.data", where, params)
        ]
    for at, *values, workflow, run_tenant, run_id in rows:
        c = _charge(at, tuple(values), workflow, run_tenant, run_id)
        if c is not None:
            yield c
    where, params = _window("u.created_at", since, until, tenant)
    for _, at, model, amount, workflow, run_tenant, run_id in _tables.journal_lost(store, where, params):
        yield Charge(at, str(model or "?"), usd_of(amount), True, 0, 0, run_id, workflow, run_tenant)


@dataclass(slots=True)
class SpendLine:
    """A run's spend on one model: book rows (or journal calls) summed, and their hours."""

    calls: int = 0
    usd: Decimal = Decimal(0)
    estimated: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0
    hours: set[str] = field(default_factory=set)

    def add(
        self, calls: int, usd: Decimal, estimated: Decimal, input_tokens: int, output_tokens: int, hour: str
    ) -> None:
        self.calls += calls
        self.usd += usd
        self.estimated += estimated
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.hours.add(hour)

    def figures(self) -> dict[str, Any]:
        """What is compared, exactly (money as ``Decimal``)."""
        return {
            "calls": self.calls, "cost_usd": self.usd, "estimated_usd": self.estimated,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON (money as exact decimal strings)."""
        return {k: usd_str(v) if isinstance(v, Decimal) else v for k, v in self.figures().items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpendLine:
        """The inverse of ``to_dict`` (a prune record's figures)."""
        return cls(
            int(data["calls"]), Decimal(str(data["cost_usd"])), Decimal(str(data["estimated_usd"])),
            int(data["input_tokens"]), int(data["output_tokens"]),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunSpend:
    """One run id's spend as the book holds it and as its journal records it, per model."""

    run_id: str
    exists: bool
    """The run has a ``runs`` row (a book row of a run that does not exist was not written by the ledger)."""
    book: dict[str, SpendLine]
    journal: dict[str, SpendLine]
    journaled: bool
    """An event on the run's chain records a charged call (a pruned run's chain has none)."""


def book_runs_since(store: Store, since: str) -> list[str]:
    """The runs with a spend book row of ``since``'s hour (an ISO time) or later."""
    return _tables.book_runs_since(store, _tables.hour_of(since))


def book_and_journal(
    store: Store, *, run_id: str | None = None, run_ids: Iterable[str] | None = None, page: int = 500
) -> Iterator[RunSpend]:
    """Every run (or ``run_id`` only, or those of ``run_ids``) and every run id the book names,
    in key order, with its book rows and its journal's charged calls summed per model: the two
    sides of the check of the book. A page of runs at a time (memory stays flat on a large
    store), both sides of a page read from one snapshot, so a charge committed meanwhile never
    shows on one side only. ``run_ids``: one run at a time (each its own snapshot)."""
    if run_id is not None or run_ids is not None:
        for one in sorted({run_id} if run_id is not None else set(run_ids or ())):
            yield from _range_spend(store, None, None, one)
        return
    after: str | None = None
    while True:
        ids = _tables.run_ids_after(store, after, page)
        hi = ids[-1] if len(ids) == page else None  # the last page takes every id after it
        yield from _range_spend(store, after, hi, None)
        if hi is None:
            return
        after = hi


def _range_spend(store: Store, lo: str | None, hi: str | None, only: str | None) -> Iterator[RunSpend]:
    """The runs whose id is in ``(lo, hi]`` (or is ``only``): the rules of ``charges`` applied
    to each charged-call event in a loop of its own (a store has millions of calls); amounts
    seen before are not parsed again."""
    fields = ", ".join(_tables.json_field(store, f, parsed=True) for f in _FIELDS)
    try:
        rows = _tables.spend_check_rows(store, fields, lo, hi, only)
    except Exception:  # a damaged event (not JSON): its fields are read here, as ``charges`` does
        rows = [
            (r[0], r[1], *_fields_of(r[2])) if r[0] == "e" else r
            for r in _tables.spend_check_rows(store, "e.data" + ", NULL" * 6, lo, hi, only)
        ]
    known: set[str] = set()
    book: dict[str, dict[str, SpendLine]] = defaultdict(lambda: defaultdict(SpendLine))
    sums: dict[tuple[str, str], list[Any]] = {}
    lost: list[tuple[Any, ...]] = []
    amounts: dict[Any, Decimal] = {}
    zero = Decimal(0)
    for tag, run, kind, name, cost, estimated, error, tokens_in, tokens_out in rows:
        if tag != "e":
            if tag == "r":
                known.add(run)
            elif tag == "b":  # model, hour, calls, cost, estimated, input and output tokens
                book[run][kind].add(
                    int_of(cost), usd_of(estimated), usd_of(error), int_of(tokens_in), int_of(tokens_out), str(name)
                )
            else:
                lost.append((run, kind, name, cost))
            continue
        usd = amounts.get(cost)
        if usd is None:
            usd = amounts[cost] = usd_of(cost)
        # A failed call counts only when it was charged (an answer lost after sending).
        if kind == "llm":
            model = str(name or "?")
        elif kind == "tool" and usd:
            model = f"tool:{name}"
        else:
            continue
        if error and not cost:
            continue
        line = sums.get((run, model))
        if line is None:
            line = sums[run, model] = [0, zero, zero, 0, 0]
        line[0] += 1
        line[1] += usd
        if truthy(estimated):
            line[2] += usd
        line[3] += int_of(tokens_in)
        line[4] += int_of(tokens_out)
    # The journals of runs only (``charges`` reads them joined with their runs).
    journal: dict[str, dict[str, SpendLine]] = defaultdict(dict)
    for (run, model), (calls, usd, est, tokens_in, tokens_out) in sums.items():
        if run in known:
            journal[run][model] = SpendLine(calls, usd, est, tokens_in, tokens_out)
    journaled = set(journal)
    for run, model, amount, at in lost:  # lost with its process, charged, not on its journal yet
        if run in known:
            usd = usd_of(amount)
            journal[run].setdefault(str(model or "?"), SpendLine()).add(1, usd, usd, 0, 0, _tables.hour_of(str(at)))
    for run in sorted(known | set(book) | set(journal)):
        yield RunSpend(run, run in known, dict(book.get(run, {})), dict(journal.get(run, {})), run in journaled)


def journal_run_spend(store: Store, run_id: str) -> dict[str, SpendLine]:
    """What one run's journal records it spent, per model (a prune keeps this on its record)."""
    for run in book_and_journal(store, run_id=run_id):
        return run.journal
    return {}


def charge_of(at: str, data_json: str, workflow: str, tenant: str | None, run_id: str) -> Charge | None:
    """The charge one event's JSON records (``None``: not a charged call)."""
    return _charge(at, _fields_of(data_json), workflow, tenant, run_id)


def _charge(at: str, values: tuple[Any, ...], workflow: str, tenant: str | None, run_id: str) -> Charge | None:
    kind, name, cost, estimated, error, tokens_in, tokens_out = values
    # A failed call counts only when it was charged (an answer lost after sending).
    if kind not in ("llm", "tool") or (error and not cost) or (kind == "tool" and not usd_of(cost)):
        return None
    return Charge(
        at=at, model=str(name or "?") if kind == "llm" else f"tool:{name}", usd=usd_of(cost),
        estimated=truthy(estimated), input_tokens=int_of(tokens_in), output_tokens=int_of(tokens_out), run_id=run_id,
        workflow=workflow, tenant=tenant,
    )  # fmt: skip


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

    Read from the spend book: what the ledger charged, by the hour of the store's clock. The
    window counts whole hours: every hour that overlaps ``[since, until)``. ``split`` breaks
    each row's spend down by a second grouping (``day`` by ``model``: spend over time per
    model). Amounts are decimal strings.
    """
    for name, value in (("group", group), ("split", split)):
        if value is not None and value not in GROUPS:
            raise UserError(f"{name} must be one of {', '.join(GROUPS)}, got {value!r}")
    rows: dict[str, _Totals] = defaultdict(_Totals)
    total = _Totals()
    for key, part, *sums in _summed(store, [group, split or group], since, until, tenant):
        rows[key].add_sums(sums, part if split else None)
        total.add_sums(sums, None)
    return _answer(rows, total, group=group, split=split, since=since, until=until, tenant=tenant)


def journal_spend(
    store: Store,
    group: str,
    *,
    since: str | None = None,
    until: str | None = None,
    tenant: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """``spend`` summed from the runs' journals instead of the book (the check of the book,
    and the benchmark's other side): every charged call's event, by the writer's time."""
    rows: dict[str, _Totals] = defaultdict(_Totals)
    total = _Totals()
    for c in charges(store, since=since, until=until, tenant=tenant):
        b = _Booked(
            hour=_tables.hour_of(c.at), run_id=c.run_id, model=c.model, workflow=c.workflow, tenant=c.tenant, calls=1,
            usd=c.usd, estimated=c.usd if c.estimated else Decimal(0), input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
        )  # fmt: skip
        rows[b.key(group)].add(b, split)
        total.add(b, None)
    return _answer(rows, total, group=group, split=split, since=since, until=until, tenant=tenant)


def _answer(rows: dict[str, _Totals], total: _Totals, **query: Any) -> dict[str, Any]:
    """The answer's shape, shared by the book and the journal: the query, its rows most spent
    first (by time for ``day`` and ``hour``), and the total."""
    by_time = query["group"] in ("day", "hour")
    ordered = sorted(rows.items(), key=(lambda kv: kv[0]) if by_time else (lambda kv: (-kv[1].usd, kv[0])))
    return {**query, "rows": [{"key": k, **v.to_dict()} for k, v in ordered], "total": total.to_dict()}


def top_runs(
    store: Store, *, since: str | None = None, until: str | None = None, tenant: str | None = None, limit: int = 10
) -> list[dict[str, Any]]:
    """The runs that spent most in the window, with their workflow, tenant, status and calls."""
    # The runs' totals first; the split by model only for the few shown.
    ranked = sorted(_summed(store, ["run"], since, until, tenant), key=lambda r: (-r[2], r[0]))
    chosen = [r[0] for r in ranked[: max(1, min(limit, 500))]]
    per_run: dict[str, _Totals] = {run_id: _Totals() for run_id in chosen}
    for run_id, model, *sums in _summed(store, ["run", "model"], since, until, tenant, runs=chosen):
        per_run[run_id].add_sums(sums, model)
    best = list(per_run.items())
    info = _tables.runs_info(store, [k for k, _ in best])
    out = []
    for run_id, totals in best:
        workflow, run_tenant, status, created_at = info.get(run_id, (None, None, None, None))
        out.append({
            "run_id": run_id, "workflow": workflow, "tenant": run_tenant, "status": status, "created_at": created_at,
            **totals.to_dict(),
        })  # fmt: skip
    return out


def run_spend(store: Store, run_ids: Sequence[str]) -> dict[str, Decimal]:
    """What each run spent, from the spend book (``Decimal(0)`` for a run with no charge):
    the ``run`` rows of ``spend``, read for a page of runs by their ids. A call lost with its
    process counts from when it was charged at its reservation, before its run's journal
    records it."""
    totals = _tables.run_totals(store, list(dict.fromkeys(run_ids)))
    return {run_id: totals.get(run_id, Decimal(0)) for run_id in run_ids}


def run_spend_sql(store: Store, run_column: str) -> str:
    """SQL for what the run whose id is in ``run_column`` spent (its book rows summed), for a
    filter on runs (``min_cost_usd``): exact on PostgreSQL, a float on SQLite."""
    if not run_column.replace(".", "").replace("_", "").isalnum():
        raise ValueError(f"not a column name: {run_column!r}")
    return _tables.run_total_sql(store, run_column)


def run_cost(store: Store, run_id: str) -> tuple[Decimal, Decimal, Decimal]:
    """``(spent, reserved, unknown)`` of a run, in one read: what it spent (as ``run_spend``),
    money held for its calls in flight, and the part of ``spent`` charged at a reservation for
    calls lost with their process that its journal does not record yet (the journal's calls
    and it add up to ``spent``)."""
    return _tables.run_amounts(store, run_id)


def spend_rows(store: Store, keys: Sequence[str]) -> list[tuple[Any, ...]]:
    """The whole book summed per ``keys`` (each one of ``GROUPS``): rows of the keys' values,
    then calls, cost and estimated cost (``Decimal``), input and output tokens."""
    for key in keys:
        if key not in GROUPS:
            raise UserError(f"group must be one of {', '.join(GROUPS)}, got {key!r}")
    return _summed(store, list(keys), None, None, None)


@dataclass(frozen=True, slots=True)
class _Booked:
    """One row of the spend book: a run's calls to one model in one hour."""

    hour: str
    run_id: str
    model: str
    workflow: str
    tenant: str | None
    calls: int
    usd: Decimal
    estimated: Decimal
    input_tokens: int
    output_tokens: int

    def key(self, group: str) -> str:
        return {
            "model": self.model, "workflow": self.workflow, "tenant": self.tenant or "-", "day": self.hour[:10],
            "hour": self.hour, "run": self.run_id,
        }[group]  # fmt: skip


def _summed(
    store: Store,
    keys: list[str],
    since: str | None,
    until: str | None,
    tenant: str | None,
    runs: list[str] | None = None,
) -> list[tuple[Any, ...]]:
    lo = _hour(since, up=False) if since else None
    hi = _hour(until, up=True) if until else None
    return _tables.spend_groups(store, keys, lo, hi, tenant, runs)


def _hour(text: str, *, up: bool) -> str:
    """The hour bucket a window bound falls in (``up``: the first one after an end that is not
    the very start of an hour)."""
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return _tables.hour_of(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    start = moment.replace(minute=0, second=0, microsecond=0)
    if up and start != moment:
        start += timedelta(hours=1)
    return start.strftime("%Y-%m-%dT%H:00")


class _Totals:
    __slots__ = ("calls", "estimated", "input_tokens", "output_tokens", "parts", "usd")

    def __init__(self) -> None:
        self.calls = 0
        self.usd = Decimal(0)
        self.estimated = Decimal(0)
        self.input_tokens = 0
        self.output_tokens = 0
        self.parts: dict[str, Decimal] = {}

    def add(self, b: _Booked, split: str | None) -> None:
        self.calls += b.calls
        self.usd += b.usd
        self.estimated += b.estimated
        self.input_tokens += b.input_tokens
        self.output_tokens += b.output_tokens
        if split:
            key = b.key(split)
            self.parts[key] = self.parts.get(key, Decimal(0)) + b.usd

    def add_sums(self, sums: list[Any], part: str | None) -> None:
        calls, usd, estimated, input_tokens, output_tokens = sums
        self.calls += calls
        self.usd += usd
        self.estimated += estimated
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        if part is not None:
            self.parts[part] = self.parts.get(part, Decimal(0)) + usd

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cost_usd": usd_str(self.usd), "calls": self.calls, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "estimated_usd": usd_str(self.estimated),
        }  # fmt: skip
        if self.parts:
            out["split"] = {k: usd_str(v) for k, v in sorted(self.parts.items(), key=lambda kv: (-kv[1], kv[0]))}
        return out


_FIELDS = ("kind", "name", "cost_usd", "cost_estimated", "error", "usage.input_tokens", "usage.output_tokens")


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


def truthy(value: Any) -> bool:
    return value not in (None, 0, "0", "false", False, "")


def int_of(value: Any) -> int:
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


def usd_of(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except ArithmeticError:
        return Decimal(0)
