"""The ledger's two implementations (portable SQL on SQLite, one-statement functions on
PostgreSQL) keep the same books: the same sequence of reserve, clamp, refuse, settle, expire,
late settle and alerts gives the same numbers on both stores."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from wflo._errors import BudgetExceededError
from wflo.cost._ledger import CostRequest, Ledger, Limit
from wflo.store import open_store


def test_same_books_on_both_stores(store_url: str) -> None:
    with open_store(store_url) as store:
        led = Ledger(store)
        led.set_limit("tenant:a", "1", by="test", alerts=(50, 90))
        led.set_limit("project:p", "0.8", by="test", max_reservation_usd="0.6")
        run = Limit("run:r1", Decimal("0.7"))
        req = CostRequest(input_cost=Decimal("0.1"), output_price_per_token=Decimal("0.001"), output_cap=400)
        scopes = ["tenant:a", "project:p", "workflow:none", "global"]
        # 0.1 + 0.4 = 0.5 fits everywhere (max reservation 0.6).
        first = led.reserve(run_id="r1", scopes=scopes, extra_limits=[run], cost=req, call_id="1", model="m")
        assert first is not None and first.amount == Decimal("0.5") and not first.clamped
        assert sorted(first.scopes) == [("project:p", ""), ("run:r1", ""), ("tenant:a", "")]
        # Room left: run 0.2 -> clamped to 100 tokens (0.1 + 0.1).
        second = led.reserve(run_id="r1", scopes=scopes, extra_limits=[run], cost=req)
        assert second is not None and second.clamped and second.output_cap == 100 and second.amount == Decimal("0.2")
        with pytest.raises(BudgetExceededError) as refused:
            led.reserve(run_id="r1", scopes=scopes, extra_limits=[run], cost=req)
        assert refused.value.scope == "run:r1" and refused.value.reserved == Decimal("0.7")
        assert led.reserve(run_id=None, scopes=["workflow:none"], cost=req) is None  # no limit anywhere
        # Settle the first for less; the alert at 50% of the tenant is not crossed yet (0.3).
        op = led.settle_op(first, Decimal("0.3"))
        store.write(op)
        tenant = led.scope_usage("tenant:a")
        assert tenant is not None and tenant.spent == Decimal("0.3") and tenant.reserved == Decimal("0.2")
        assert first.alerts_crossed == []
        # The second one's process "dies": its hold expires and is charged, then its answer arrives late.
        led2 = led.reserve(run_id="r2", scopes=["tenant:a"], cost=req, ttl_seconds=0.01)
        assert led2 is not None and led2.amount == Decimal("0.5")
        time.sleep(0.05)
        assert led.expire() == 1
        tenant = led.scope_usage("tenant:a")
        assert tenant is not None and tenant.spent == Decimal("0.8") and tenant.reserved == Decimal("0.2")
        late = led.settle_op(led2, Decimal("0.25"))
        store.write(late)
        # The expiry passed the 50% mark silently; the next settled call announces it.
        assert [a["percent"] for a in led2.alerts_crossed] == [50]
        tenant = led.scope_usage("tenant:a")
        assert tenant is not None and tenant.spent == Decimal("0.55")
        store.write(led.settle_unknown_op(second, "timeout"))
        for scope, spent in (("tenant:a", "0.75"), ("project:p", "0.5"), ("run:r1", "0.5")):
            usage = led.scope_usage(scope)
            assert usage is not None and usage.spent == Decimal(spent) and usage.reserved == 0, scope
        reasons = sorted((u["reason"], u["actual_usd"]) for u in led.unknown_outcomes())
        assert reasons == [("expired", "0.25"), ("timeout", None)]
        assert led.open_reservations() == 0


def test_postgres_reserve_sent_twice_holds_once(pg_url: str) -> None:
    """A reservation resent after a lost connection (same id) is not held twice."""
    import json

    with open_store(pg_url) as store:
        Ledger(store).set_limit("tenant:twice", "1", by="test")
        sql = "SELECT status, amount FROM wflo_reserve(?, NULL, NULL, NULL, ?::text[], ?::jsonb, ?::numeric, ?::numeric, ?, 16, '', '', 'now', 'z')"
        args = ("res-1", ["tenant:twice"], json.dumps([]), Decimal("0.1"), Decimal("0.001"), 100)
        assert store.read(sql, args) == [("ok", "0.2")]
        assert store.read(sql, args) == [("ok", "0.2")]
        usage = Ledger(store).scope_usage("tenant:twice")
        assert usage is not None and usage.reserved == Decimal("0.2")
        assert Ledger(store).open_reservations() == 1
