"""The ledger's read-outs for reports and the budgets API (``wflo.cost.budget_records``,
``budget_periods``, ``budget_alerted``) and the ``wflo.cost._tables`` queries under them, on
SQLite and PostgreSQL: the server, the CLI and compliance read the budget tables only through these."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import pytest

from wflo.cost import CostRequest, Ledger, budget_alerted, budget_periods, budget_records
from wflo.cost import _tables as tables
from wflo.store import Store, open_store

REQ = CostRequest(input_cost=Decimal("0.1"), output_price_per_token=Decimal("0.001"), output_cap=400)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    st = open_store(store_url)
    yield st
    st.close()


def _past(store: Store, scope: str, start: str, spent: str, alerted: list[int]) -> None:
    """A period of ``scope`` that started at ``start``, as the ledger leaves it."""
    store.write(lambda cur: store.execute(
        cur,
        "INSERT INTO budget_usage (scope, period_start, limit_usd, spent_usd, reserved_usd, alerted, updated_at) "
        "VALUES (?, ?, '1', ?, '0', ?, ?)",
        (scope, start, spent, json.dumps(alerted), store.now()),
    ))  # fmt: skip


def test_records_periods_and_alerts(store: Store) -> None:
    led = Ledger(store)
    led.set_limit("tenant:acme", "1", by="user:fin", period="day", alerts=(50, 90))
    led.set_limit("global", "10", by="user:fin")
    res = led.reserve(run_id="r1", scopes=["tenant:acme", "global"], cost=REQ, call_id="1", model="m")
    assert res is not None
    store.write(led.settle_op(res, Decimal("0.6")))  # crosses tenant:acme's 50%
    today = next(u.period_start for u in led.usage("tenant:acme"))
    _past(store, "tenant:acme", "2026-01-01T00:00:00.000000Z", "0.95", [50, 90])
    _past(store, "tenant:acme", "2026-01-02T00:00:00.000000Z", "0.1", [])

    records = budget_records(store)
    assert [(b["scope"], b["limit_usd"], b["period"], b["updated_by"]) for b in records["limits"]] == [
        ("global", "10", "none", "user:fin"), ("tenant:acme", "1", "day", "user:fin")]  # fmt: skip
    assert [(u["scope"], u["period_start"], u["spent_usd"], u["percent"]) for u in records["usage"]] == [
        ("global", None, "0.6", 6.0),
        ("tenant:acme", "2026-01-01T00:00:00.000000Z", "0.95", 95.0),
        ("tenant:acme", "2026-01-02T00:00:00.000000Z", "0.1", 10.0),
        ("tenant:acme", today, "0.6", 60.0),
    ]  # fmt: skip
    # ``until``: the periods that start before it (a period-less "total" starts at the beginning).
    early = budget_records(store, until="2026-01-02T00:00:00.000000Z")
    assert [(u["scope"], u["period_start"]) for u in early["usage"]] == [
        ("global", None), ("tenant:acme", "2026-01-01T00:00:00.000000Z")]  # fmt: skip
    assert early["limits"] == records["limits"]  # limits are as they are now

    periods = budget_periods(store, "tenant:acme")
    assert [(p["period_start"], p["spent_usd"], p["alerted"]) for p in periods] == [
        (today, "0.6", [50]),
        ("2026-01-02T00:00:00.000000Z", "0.1", []),
        ("2026-01-01T00:00:00.000000Z", "0.95", [50, 90]),
    ]  # fmt: skip
    assert all(p["scope"] == "tenant:acme" and p["limit_usd"] == "1" and p["reserved_usd"] == "0" for p in periods)
    assert [p["period_start"] for p in budget_periods(store, "tenant:acme", limit=1)] == [today]
    assert budget_periods(store, "tenant:nobody") == []

    assert budget_alerted(store) == {
        ("global", ""): [],
        ("tenant:acme", today): [50],
        ("tenant:acme", "2026-01-01T00:00:00.000000Z"): [50, 90],
        ("tenant:acme", "2026-01-02T00:00:00.000000Z"): [],
    }


def test_the_queries_under_them(store: Store) -> None:
    _past(store, "a", "2026-01-01T00:00:00.000000Z", "0.5", [50])
    _past(store, "a", "2026-02-01T00:00:00.000000Z", "0.25", [])
    _past(store, "b", "", "1", [])
    assert tables.usage_records(store) == [
        ("a", "2026-01-01T00:00:00.000000Z", "1", "0.5", "0"),
        ("a", "2026-02-01T00:00:00.000000Z", "1", "0.25", "0"),
        ("b", "", "1", "1", "0"),
    ]
    assert tables.usage_records(store, "2026-02-01T00:00:00.000000Z") == [
        ("a", "2026-01-01T00:00:00.000000Z", "1", "0.5", "0"), ("b", "", "1", "1", "0")]  # fmt: skip
    assert sorted(tables.usage_alerted(store)) == [
        ("a", "2026-01-01T00:00:00.000000Z", "[50]"), ("a", "2026-02-01T00:00:00.000000Z", "[]"), ("b", "", "[]")]  # fmt: skip
    assert tables.scope_periods(store, "a", 5) == [
        ("2026-02-01T00:00:00.000000Z", "1", "0.25", "0", "[]"), ("2026-01-01T00:00:00.000000Z", "1", "0.5", "0", "[50]")]  # fmt: skip
    assert tables.scope_periods(store, "a", 1) == [("2026-02-01T00:00:00.000000Z", "1", "0.25", "0", "[]")]
