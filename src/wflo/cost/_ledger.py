"""The budget ledger: reserve before a call, settle after it, in the store, atomically.

Every scope that has a limit keeps ``spent`` and ``reserved`` per period (``none``, ``day``,
``month``, in UTC). A call reserves its worst-case cost on *all* its scopes in one write
transaction (all or none), so concurrent calls in any number of processes can never together
commit more than a limit: the sum of settled spend and open reservations never exceeds it.
When the worst case does not fit, the output cap is lowered until it does, or the call is
refused. Settling replaces the reservation by the real cost in the same transaction as the
call's journal event.

An unknown outcome is charged, never forgiven: a call whose result was lost (its process died
while it was in flight, it timed out after the request was sent, its stream was cut) is
settled *at its reservation* and the charge is marked an estimate (``budget_unknown``). A
reservation left by a dead process is settled so when it expires, or at once when its run is
resumed (:meth:`Ledger.orphans`); if the call's real cost arrives later (a slow call that
outlived its reservation), it replaces the estimate.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from .._errors import BudgetExceededError, UserError
from .._scope import check_name
from ..store import NewEvent, Store, StoreOp, new_id, now_iso, parse_iso
from . import _tables

PERIODS = ("none", "day", "month")
_next_expiry: weakref.WeakKeyDictionary[Store, float] = weakref.WeakKeyDictionary()
DEFAULT_ALERTS = (50, 80, 100)


_MAX_USD = Decimal(10**12)
_PLACES = 30


def to_usd(value: Any, what: str = "amount") -> Decimal:
    """A USD amount as an exact ``Decimal`` (str/int/Decimal; float through its repr)."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be a number of USD, got {value!r}")
    try:
        amount = Decimal(str(value)) if isinstance(value, int | float | str) else Decimal(value)
    except Exception:
        raise UserError(f"{what} must be a number of USD, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise UserError(f"{what} must be a finite, non-negative USD amount, got {value!r}")
    # Exact, but within reason: "1e999999999" was a billion digits of text in every run's options,
    # and PostgreSQL's NUMERIC, which the ledger's SQL casts amounts to, overflows long before it
    # (such a limit once stored made every reservation on its scope fail).
    if amount > _MAX_USD or (amount and amount.adjusted() < -18):
        raise UserError(f"{what} must be 0 or from 1e-18 to {_MAX_USD:,} USD, got {value!r}")
    if amount and int(amount.as_tuple().exponent) < -_PLACES:
        raise UserError(f"{what} must have at most {_PLACES} decimal places, got {value!r}")
    return amount if amount else Decimal(0)  # "0E-999999999" too


def to_alerts(value: Any, what: str = "alerts") -> tuple[int, ...]:
    """Alert thresholds as sorted, distinct whole percentages from 1 to 100."""
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise UserError(f"{what} must be a list of percentages like (50, 80, 100), got {value!r}")
    for pct in value:
        if not isinstance(pct, int) or isinstance(pct, bool) or not 1 <= pct <= 100:
            raise UserError(f"{what} must be whole percentages from 1 to 100, got {pct!r} in {value!r}")
    return tuple(sorted(set(value)))


def usd_str(amount: Decimal) -> str:
    """Exact text form of an amount (no exponent)."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _store_now(store: Store, cur: Any) -> datetime:
    return parse_iso(store.now(cur=cur))


def period_start(period: str, at: datetime | None = None) -> str:
    """The period's key (``YYYY-MM-DD``, ``YYYY-MM`` or ``""``) at ``at`` (UTC); the ledger
    passes the store's clock, never this process's."""
    at = at or datetime.now(UTC)
    if period == "day":
        return at.strftime("%Y-%m-%d")
    if period == "month":
        return at.strftime("%Y-%m")
    return ""


@dataclass(frozen=True, kw_only=True)
class Budget:
    """A spending limit for each run of a workflow: ``@wflo.workflow(budget=wflo.Budget(usd="0.50"))``.

    Checked *before* every LLM call of the run (its worst-case cost is reserved; the output
    cap is lowered to fit, or the call is refused) and settled *after* it on the provider's
    reported usage.
    """

    usd: Decimal | str | int
    """The limit in USD (str, int or Decimal; kept as an exact Decimal)."""
    max_reservation_usd: Decimal | str | int | None = None
    """Cap on what one call may reserve (``None``: no cap): one long-context call can't lock
    the whole budget."""
    alerts: tuple[int, ...] = DEFAULT_ALERTS
    """Percentages at which a ``budget.threshold`` event is recorded (and a webhook sent)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "usd", to_usd(self.usd, "Budget(usd=...)"))
        if self.max_reservation_usd is not None:
            object.__setattr__(self, "max_reservation_usd", to_usd(self.max_reservation_usd, "max_reservation_usd"))
        object.__setattr__(self, "alerts", to_alerts(self.alerts, "Budget(alerts=...)"))

    def to_run_options(self) -> dict[str, Any]:
        """How the budget is stored with each run (so any worker enforces the same limit)."""
        return {"budget": {
            "usd": usd_str(Decimal(self.usd)),
            "max_reservation_usd": None if self.max_reservation_usd is None else usd_str(Decimal(self.max_reservation_usd)),
            "alerts": list(self.alerts),
        }}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str
    limit: Decimal
    period: str = "none"
    max_reservation: Decimal | None = None
    alerts: tuple[int, ...] = DEFAULT_ALERTS


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """A scope's current period: its limit, what is spent and what is reserved."""

    scope: str
    period: str
    period_start: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal

    @property
    def remaining(self) -> Decimal:
        return self.limit - self.spent - self.reserved


@dataclass(slots=True)
class Reservation:
    """Money held for one call on every scope it touches."""

    id: str
    amount: Decimal
    scopes: list[tuple[str, str]]  # (scope, period_start)
    output_cap: int | None
    clamped: bool = False
    alerts_crossed: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    call_id: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Booking:
    """How a charged call goes in the spend book (``None`` instead: the call is not counted)."""

    model: str
    """The model, or ``tool:NAME`` for a priced tool call."""
    estimated: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    usd: Decimal | None = None
    """The amount, for a call with no reservation (a settled one is booked at what it settled)."""


BookingFn = Callable[[], Booking | None]
"""Called when the store op runs (the call's outcome is final then)."""


@dataclass(frozen=True, slots=True)
class CostRequest:
    """What the budget needs to know about a call to bound its cost."""

    input_cost: Decimal
    """Worst-case cost of the input (estimated tokens x input price)."""
    output_price_per_token: Decimal
    output_cap: int | None
    """The request's output cap in tokens (after defaults)."""
    min_output_tokens: int = 16
    """Below this, a clamped call is refused rather than sent (it could not answer)."""

    def worst(self, cap: int | None = None) -> Decimal:
        tokens = self.output_cap if cap is None else cap
        return self.input_cost + self.output_price_per_token * (tokens or 0)


class Ledger:
    """The budget tables of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _maybe_expire(self) -> None:
        # Expiry charges a lost call (it frees no room: spent rises by what reserved falls), so
        # a reservation need not wait for it; once a second is enough to keep books current,
        # in a transaction of its own (no lock-order tangle with the reservation's scopes).
        now = time.monotonic()
        if now >= _next_expiry.get(self.store, 0.0):
            _next_expiry[self.store] = now + 1.0
            self.expire()

    # ------------------------------------------------------------- limits
    def set_limit(
        self,
        scope: str,
        usd: Any,
        *,
        period: str = "none",
        max_reservation_usd: Any = None,
        alerts: Sequence[int] = DEFAULT_ALERTS,
        by: str = "unknown",
        via: str | None = None,
    ) -> Limit:
        scope = _check_scope(scope)
        if period not in PERIODS:
            raise UserError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
        limit = to_usd(usd, "usd")
        max_res = None if max_reservation_usd is None else to_usd(max_reservation_usd, "max_reservation_usd")
        alert_list = list(to_alerts(alerts))
        now = now_iso()
        before = self.get_limit(scope)

        def op(cur: Any) -> None:
            row = (
                usd_str(limit),
                period,
                None if max_res is None else usd_str(max_res),
                json.dumps(alert_list),
                now,
                by,
            )
            _tables.replace_limit(self.store, cur, scope, row, period_start(period, _store_now(self.store, cur)))

        self.store.append_system(
            [NewEvent("budget.set", {
                "scope": scope, "usd": usd_str(limit), "period": period, "by": by,
                "max_reservation_usd": None if max_res is None else usd_str(max_res),
                "before": None if before is None else {"usd": usd_str(before.limit), "period": before.period},
                **({"via": via} if via else {}),
            })],
            ops=[op],
        )  # fmt: skip
        return Limit(scope, limit, period, max_res, tuple(alert_list))

    def remove_limit(self, scope: str, *, by: str = "unknown") -> bool:
        before = self.get_limit(scope)
        if before is None:
            return False

        def op(cur: Any) -> None:
            _tables.delete_limit(self.store, cur, scope)

        self.store.append_system(
            [NewEvent("budget.removed", {"scope": scope, "by": by, "usd": usd_str(before.limit)})], ops=[op]
        )
        return True

    def get_limit(self, scope: str) -> Limit | None:
        rows = _tables.read_limit(self.store, scope)
        return _limit_row(rows[0]) if rows else None

    def limits(self) -> list[Limit]:
        return [_limit_row(r) for r in _tables.read_limits(self.store)]

    def usage(self, scope: str | None = None) -> list[BudgetUsage]:
        """Current-period usage of every limited scope (or one)."""
        self.expire()
        result = []
        at = parse_iso(self.store.now())  # the store's day and month, as the reservations'
        for lim in self.limits() if scope is None else [x for x in [self.get_limit(scope)] if x]:
            start = period_start(lim.period, at)
            rows = _tables.read_usage(self.store, lim.scope, start)
            spent, reserved = (Decimal(rows[0][0]), Decimal(rows[0][1])) if rows else (Decimal(0), Decimal(0))
            result.append(BudgetUsage(lim.scope, lim.period, start, lim.limit, spent, reserved))
        return result

    def scope_usage(self, scope: str, period_start_: str = "") -> BudgetUsage | None:
        rows = _tables.read_scope_usage(self.store, scope, period_start_)
        if not rows:
            return None
        return BudgetUsage(scope, "none", period_start_, Decimal(rows[0][0]), Decimal(rows[0][1]), Decimal(rows[0][2]))

    # ------------------------------------------------------------- reserve / settle
    def reserve(
        self,
        *,
        run_id: str | None,
        scopes: Sequence[str],
        extra_limits: Sequence[Limit] = (),
        cost: CostRequest,
        ttl_seconds: float = 600.0,
        call_id: str | None = None,
        model: str | None = None,
    ) -> Reservation | None:
        """Hold the worst-case cost of a call on every limited scope, all or none.

        Returns ``None`` when no scope has a limit. Lowers the output cap when the worst case
        does not fit; raises ``BudgetExceededError`` when even ``min_output_tokens`` do not.
        """
        self._maybe_expire()
        if self.store.dialect == "postgresql":
            from ._ledger_pg import reserve

            return reserve(self.store, run_id, scopes, extra_limits, cost, ttl_seconds, call_id, model)

        def txn(cur: Any) -> Reservation | None:
            st = self.store
            # The store's clock decides the day, the month and the expiry (as on PostgreSQL,
            # where it is the database's); on SQLite it is this machine's, which all share.
            now = st.now(cur=cur)
            at = parse_iso(now)
            limits = {lim.scope: lim for lim in extra_limits}
            names = [s for s in scopes if s not in limits]
            if names:
                for row in _tables.limits_named(st, cur, names):
                    limits[row[0]] = _limit_row(row)
            if not limits:
                return None
            rows: list[tuple[Limit, str, Decimal, Decimal]] = []
            for scope in sorted(limits):  # a fixed lock order: no deadlocks between reservers
                lim = limits[scope]
                start = period_start(lim.period, at)
                spent, reserved = self._lock_usage(cur, lim, start, now)
                rows.append((lim, start, spent, reserved))
            # The call must fit every scope at once, so the scope with the least room left
            # decides (it is also the one a refusal names).
            room: Decimal | None = None
            binding = rows[0]
            for lim, start, spent, reserved in rows:
                avail = lim.limit - spent - reserved
                if lim.max_reservation is not None:
                    avail = min(avail, lim.max_reservation)
                if room is None or avail < room:
                    room, binding = avail, (lim, start, spent, reserved)
            assert room is not None
            needed = cost.worst()
            cap, clamped = cost.output_cap, False
            if needed > room:
                # worst = input_cost + cap * output_price. The input is what is sent and cannot
                # shrink, so only the output cap is solved for, rounded down: a cap one token too
                # high could settle above the limit. A cap under min_output_tokens is refused
                # rather than sent: the input would be billed for an answer cut to nothing.
                if cost.output_price_per_token > 0:
                    fit = ((room - cost.input_cost) / cost.output_price_per_token).to_integral_value(
                        rounding=ROUND_FLOOR
                    )
                    tokens = int(fit) if fit > 0 else 0
                else:
                    tokens = 0
                if cost.output_cap is not None and cost.output_price_per_token > 0 and tokens >= cost.min_output_tokens:
                    cap, clamped = tokens, True
                    needed = cost.worst(cap)
                else:
                    lim, _, spent, reserved = binding
                    raise BudgetExceededError(
                        scope=lim.scope, limit=lim.limit, spent=spent, reserved=reserved, requested=needed
                    )
            res = Reservation(
                new_id(), needed, [(lim.scope, start) for lim, start, _, _ in rows], cap, clamped,
                run_id=run_id, call_id=call_id, model=model,
            )  # fmt: skip
            # The same amount is held on every scope: settlement later swaps that one amount for
            # the real cost everywhere, which keeps spent + reserved <= limit on each scope.
            for lim, start, _, reserved in rows:
                _tables.hold(st, cur, lim.scope, start, usd_str(reserved + needed), now)
            _tables.insert_reservation(
                st, cur,
                (res.id, run_id, json.dumps(res.scopes), usd_str(needed), st.now(ttl_seconds, cur=cur), now, call_id, model),
            )  # fmt: skip
            return res

        return self.store.write(txn)

    def _lock_usage(self, cur: Any, lim: Limit, start: str, now: str) -> tuple[Decimal, Decimal]:
        spent, reserved = _tables.lock_usage(self.store, cur, lim.scope, start, usd_str(lim.limit), now)
        return Decimal(spent), Decimal(reserved)

    def settle_op(self, res: Reservation, actual: Decimal, booking: BookingFn | None = None) -> StoreOp:
        """A store op that replaces the reservation by the real cost (run it in the event's tx).

        If the reservation already expired (and was charged as an unknown outcome), the real
        cost replaces that estimate. Crossed alert thresholds are noted in ``res.alerts_crossed``.
        ``booking`` (called when the op runs) says how the charge goes in the spend book; the
        book takes the same amount the ledger does, in the same transaction.
        """

        if self.store.dialect == "postgresql":
            from ._ledger_pg import settle_op

            return settle_op(self.store, res, actual, booking)

        def op(cur: Any) -> None:
            st = self.store
            if _tables.delete_reservation(st, cur, res.id):
                self._charge(cur, res, actual, release=res.amount)
                self._book(cur, res, actual, booking)
                return
            estimate = _tables.open_estimate(st, cur, res.id)
            if estimate is not None:
                # Charged at its reservation when it expired; the real cost is known now.
                prior = Decimal(estimate[0])
                _tables.resolve_estimate(st, cur, res.id, usd_str(actual), now_iso())
                self._charge(cur, res, actual - prior, release=Decimal(0))
                self._book(cur, res, actual, booking, correct=(prior, estimate[1]))
            else:
                self._charge(cur, res, actual, release=Decimal(0))
                self._book(cur, res, actual, booking)

        return op

    def _book(
        self,
        cur: Any,
        res: Reservation,
        actual: Decimal,
        booking: BookingFn | None,
        *,
        correct: tuple[Decimal, str | None] | None = None,
    ) -> None:
        """Put a settled charge in the spend book: the whole call, or (``correct``: the
        estimate and the hour it was booked in) the difference between the estimate and it."""
        b = booking() if booking is not None else None
        if booking is None:
            return
        est = actual if b is not None and b.estimated else Decimal(0)
        tokens = (b.input_tokens, b.output_tokens) if b is not None else (0, 0)
        model = b.model if b is not None else (res.model or "?")
        if correct is not None:
            prior, hour = correct
            _tables.book(
                self.store, cur, res.run_id, model, calls=0 if b is not None else -1, usd=actual - prior,
                estimated=est - prior, input_tokens=tokens[0], output_tokens=tokens[1], hour=hour,
            )  # fmt: skip
        elif b is not None:
            _tables.book(
                self.store, cur, res.run_id, model, calls=1, usd=actual, estimated=est,
                input_tokens=tokens[0], output_tokens=tokens[1],
            )  # fmt: skip

    def book_op(self, run_id: str, amount: Decimal, booking: BookingFn) -> StoreOp:
        """A store op that books a charge the ledger holds no reservation for (no limit applied)
        in the spend book; ``booking`` is called when the op runs."""

        def op(cur: Any) -> None:
            b = booking()
            if b is not None:
                _tables.book(
                    self.store, cur, run_id, b.model, calls=1, usd=b.usd if b.usd is not None else amount,
                    estimated=(b.usd if b.usd is not None else amount) if b.estimated else Decimal(0),
                    input_tokens=b.input_tokens, output_tokens=b.output_tokens,
                )  # fmt: skip

        return op

    def settle_unknown_op(self, res: Reservation, reason: str, booking: BookingFn | None = None) -> StoreOp:
        """A store op that settles a call whose outcome is unknown *at its reservation*.

        For a call whose result was lost after its request was sent (a timeout, a dropped
        connection, a stream cut before its usage): the provider may have billed the worst
        case, so that is what is charged, and the charge is kept as an estimate
        (``budget_unknown``, shown by ``wflo costs``). Run it in the transaction of the call's
        event, which should carry ``unknown_outcome`` and ``cost_estimated``. If the call's real
        cost becomes known later, :meth:`settle_op` replaces the estimate.
        """

        def op(cur: Any) -> None:
            st = self.store
            if not _tables.delete_reservation(st, cur, res.id):
                # Expired meanwhile: already charged (and booked) as an unknown outcome. The
                # call's event, committed with this op, records it now: it is no longer a lost
                # call waiting for its journal (else the journal's view counted it twice).
                _tables.mark_recorded(st, cur, res.id)
                return
            hour = _tables.store_hour(st, cur)
            row = (res.id, res.run_id, res.call_id, res.model, json.dumps(res.scopes), usd_str(res.amount))
            _tables.insert_unknown(st, cur, row, reason, 1, now_iso(), hour)
            self._charge(cur, res, res.amount, release=res.amount)
            b = booking() if booking is not None else None
            if booking is None or b is not None:
                _tables.book(
                    st, cur, res.run_id, b.model if b is not None else (res.model or "?"), calls=1, usd=res.amount,
                    estimated=res.amount, input_tokens=b.input_tokens if b else 0,
                    output_tokens=b.output_tokens if b else 0, hour=hour,
                )  # fmt: skip

        return op

    def _charge(self, cur: Any, res: Reservation, spend: Decimal, *, release: Decimal, alerts: bool = True) -> None:
        """Add ``spend`` and release ``release`` of the reservation on each of its scopes.

        ``alerts=False`` (a charge made where no event can announce it: an expiry, a resume)
        leaves thresholds unmarked, so the next settled call that is past one announces it."""
        st = self.store
        now = now_iso()
        for scope, start in sorted(res.scopes):
            row = _tables.lock_usage_alerts(st, cur, scope, start)
            if row is None:
                continue
            limit, spent, reserved = Decimal(row[0]), Decimal(row[1]), Decimal(row[2])
            alerted = set(json.loads(row[3]))
            new_spent = spent + spend
            new_reserved = max(Decimal(0), reserved - release)
            thresholds = (tuple(json.loads(row[4])) if row[4] else DEFAULT_ALERTS) if alerts else ()
            for pct in thresholds:
                if pct not in alerted and limit > 0 and new_spent * 100 >= limit * pct:
                    alerted.add(pct)
                    res.alerts_crossed.append(
                        {"scope": scope, "percent": pct, "spent": usd_str(new_spent), "limit": usd_str(limit)}
                    )
            _tables.update_usage(
                st, cur, scope, start, usd_str(new_spent), usd_str(new_reserved), json.dumps(sorted(alerted)), now
            )

    def settle(self, res: Reservation, actual: Decimal) -> None:
        """Settle outside a journal append (calls made outside any run)."""
        op = self.settle_op(res, actual)
        self.store.write(op)

    def expire(self) -> int:
        """Settle every reservation past its expiry at its amount (an unknown outcome); return how many.

        Expiry is judged on the store's clock (on which reservations set it), not this
        process's: a worker whose clock runs ahead must not charge others' calls in flight."""
        return self.store.write(lambda cur: self._expire(cur, self.store.now(cur=cur)))

    def _expire(self, cur: Any, now: str) -> int:
        st = self.store
        stale = _tables.stale_reservations(st, cur, now)
        hour = _tables.store_hour(st, cur) if stale else ""
        for res_id, run_id, call_id, model, scopes_json, amount_text in stale:
            res = _stale(res_id, run_id, call_id, model, scopes_json, amount_text)
            if not _tables.delete_reservation(st, cur, res_id):
                continue
            # Its process died (or the call outlived its hold): the provider may have billed
            # it, so it is charged at its reservation, as an estimate, never released as free.
            row = (res_id, run_id, call_id, model, scopes_json, amount_text)
            _tables.insert_unknown(st, cur, row, "expired", 0, now, hour)
            self._charge(cur, res, res.amount, release=res.amount, alerts=False)
            _tables.book(st, cur, run_id, model or "?", calls=1, usd=res.amount, estimated=res.amount, hour=hour)
        return len(stale)

    def orphans_read(self, run_id: str) -> tuple[str, tuple[Any, ...]]:
        """The read :meth:`orphans` makes, as ``(sql, params)``: a woken run sends it with its
        claim (``Store.read_ahead``), so it costs no round trip of its own."""
        return _tables.lost_calls_read(run_id)

    def orphans(self, run_id: str) -> tuple[list[NewEvent], StoreOp | None]:
        """Calls of ``run_id`` lost by an earlier execution of the run (its process died while
        they were in flight): the events that record them as estimated charges, and the store
        op that settles them at their reservations. Commit both with the run's ``run.resumed``
        event: only the execution that holds the run's lease can."""
        rows = _tables.lost_calls(self.store, run_id)
        if not rows:
            return [], None
        events = [
            NewEvent("budget.unknown_outcome", {
                "call": call_id, "name": model, "kind": "llm", "cost_usd": amount, "cost_estimated": True,
                "unknown_outcome": "lost" if state == "held" else state, "reservation": res_id,
            })
            for res_id, _, call_id, model, _, amount, state in rows
        ]  # fmt: skip

        def op(cur: Any) -> None:
            st = self.store
            now = now_iso()
            hour = _tables.store_hour(st, cur)
            for res_id, run, call_id, model, scopes_json, amount, _ in rows:
                if _tables.delete_reservation(st, cur, res_id):
                    row = (res_id, run, call_id, model, scopes_json, amount)
                    _tables.insert_unknown(st, cur, row, "lost", 1, now, hour)
                    res = _stale(res_id, run, call_id, model, scopes_json, amount)
                    self._charge(cur, res, res.amount, release=res.amount, alerts=False)
                    _tables.book(st, cur, run, model or "?", calls=1, usd=res.amount, estimated=res.amount, hour=hour)
                else:
                    # Expired earlier: charged, and booked in the spend book, then.
                    _tables.mark_recorded(st, cur, res_id)

        return events, op

    def unknown_outcomes(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Calls charged at their reservation because their outcome is unknown (estimates)."""
        rows = _tables.unknown_outcomes(self.store, run_id)
        keys = ("reservation", "run_id", "call", "model", "amount_usd", "reason", "actual_usd", "recorded", "at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def open_reservations(self) -> int:
        return _tables.count_reservations(self.store)


def _stale(
    res_id: str, run_id: str | None, call_id: str | None, model: str | None, scopes_json: str, amount: str
) -> Reservation:
    scopes = [(str(a), str(b)) for a, b in json.loads(scopes_json)]
    return Reservation(res_id, Decimal(amount), scopes, None, run_id=run_id, call_id=call_id, model=model)


def _limit_row(row: Sequence[Any]) -> Limit:
    return Limit(
        scope=row[0],
        limit=Decimal(row[1]),
        period=row[2],
        max_reservation=None if row[3] is None else Decimal(row[3]),
        alerts=tuple(json.loads(row[4])),
    )


_SCOPE_KINDS = ("run", "workflow", "tenant", "agent", "global", "user", "project")


def _check_scope(scope: str) -> str:
    kind, _, name = scope.partition(":") if isinstance(scope, str) else ("", "", "")
    if scope != "global" and (kind not in _SCOPE_KINDS or not name):
        raise UserError(
            f"budget scope {scope!r} must look like 'tenant:acme', 'workflow:NAME', 'agent:NAME', 'project:NAME', "
            "'user:NAME', 'run:ID' or 'global'"
        )
    if scope != "global":
        check_name(scope, "budget scope", colon=True)  # no NUL, line break or bidi control
    return scope
