"""The ledger on PostgreSQL: a reservation is one statement, one round trip (``wflo_reserve``),
and a settlement is one statement sent in the same round trip as the call's journal event
(``wflo_settle``, or ``wflo_settle_spend`` which also books the charge in the spend book; created
by migrations m008 and m017, the same rules as the portable path in ``_ledger.py``; their SQL is
in ``_tables.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from .._errors import BudgetExceededError
from ..store import Store, StoreOp, new_id, now_iso
from . import _tables
from ._ledger import BookingFn, CostRequest, Limit, Reservation, usd_str


def reserve(
    store: Store,
    run_id: str | None,
    scopes: Sequence[str],
    extra_limits: Sequence[Limit],
    cost: CostRequest,
    ttl_seconds: float,
    call_id: str | None,
    model: str | None,
) -> Reservation | None:
    """``reserve`` as one statement (the ``wflo_reserve`` function, migration m006): one
    round trip, committed on its own. Its period (day, month), time and expiry are the
    database's clock. Sent again after a lost connection, it finds its
    reservation (same id) instead of holding the money twice."""
    extra = [
            {"scope": lim.scope, "limit": usd_str(lim.limit), "period": lim.period,
             "max_res": None if lim.max_reservation is None else usd_str(lim.max_reservation)}
            for lim in extra_limits
        ]  # fmt: skip
    res_id = new_id()
    row = _tables.pg_reserve(
            store,
            (res_id, run_id, call_id, model, [s for s in scopes], json.dumps(extra), cost.input_cost,
             cost.output_price_per_token, cost.output_cap, cost.min_output_tokens),
            ttl_seconds,
        )  # fmt: skip
    status, amount, cap, clamped, scopes_json, b_scope, b_limit, b_spent, b_reserved = row
    if status == "none":
        return None
    if status == "refused":
        raise BudgetExceededError(
                scope=b_scope, limit=Decimal(b_limit), spent=Decimal(b_spent), reserved=Decimal(b_reserved),
                requested=Decimal(amount),
            )  # fmt: skip
    held = [(str(a), str(b)) for a, b in json.loads(scopes_json)]
    return Reservation(res_id, Decimal(amount), held, cap, bool(clamped), run_id=run_id, call_id=call_id, model=model)


def settle_op(store: Store, res: Reservation, actual: Decimal, booking: BookingFn | None = None) -> StoreOp:
    """``settle_op`` as one ``wflo_settle`` statement whose answer (the alert thresholds the
    charge crossed) is read after the commit, so the append pipelines it with its event. With
    ``booking``, ``wflo_settle_spend`` also books the charge in the spend book (m017)."""

    def op(cur: Any) -> Callable[[], None] | None:
        own = cur.connection.cursor()  # its own cursor: the answer must outlive later statements
        params = (res.id, actual, res.amount, json.dumps(res.scopes), now_iso())
        if booking is None:
            _tables.pg_settle(store, own, params)
        else:
            b = booking()
            _tables.pg_settle_spend(store, own, (
                *params, b is not None, res.run_id, b.model if b is not None else (res.model or "?"),
                b is not None and b.estimated, b.input_tokens if b else 0, b.output_tokens if b else 0,
            ))  # fmt: skip

        def then() -> None:
            try:
                for scope, pct, spent, limit in own.fetchall():
                    res.alerts_crossed.append({"scope": scope, "percent": pct, "spent": spent, "limit": limit})
            finally:
                own.close()

        if getattr(cur.connection, "_pipeline", None) is None:
            then()  # not pipelined (``store.write(op)``): the answer is here already
            return None
        return then

    return op
