"""P1 against a skewed worker on PostgreSQL: the day (and month) a reservation counts against,
its time and its expiry are the database's clock. A worker whose clock runs a day ahead or
behind (libfaketime) reserves against today's budget, as every other worker does; it cannot
open tomorrow's fresh budget early, nor reuse yesterday's; the expiry it sets is the
database's time plus the TTL, and its expiry sweep judges others' reservations on that clock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal

import pytest

from wflo.cost._ledger import CostRequest, Ledger
from wflo.store import open_store, parse_iso

RESERVER = """
import sys
from decimal import Decimal
from wflo._errors import BudgetExceededError
from wflo.cost._ledger import CostRequest, Ledger
from wflo.store import open_store

store = open_store(sys.argv[1])
ledger = Ledger(store)
req = CostRequest(input_cost=Decimal("0.5"), output_price_per_token=Decimal("0"), output_cap=1)
try:
    res = ledger.reserve(run_id=None, scopes=["tenant:acme/eu"], cost=req, ttl_seconds=600)
except BudgetExceededError as exc:
    print("refused", exc.scope)
else:
    assert res is not None
    print("held", res.scopes[0][1])
ledger.expire()  # its sweep: judged on the database's clock, not this worker's
store.close()
"""


def _skewed(url: str, offset: str) -> str:
    if shutil.which("faketime") is None:
        if os.environ.get("CI"):
            pytest.fail("faketime is required in CI (apt-get install faketime)")
        pytest.skip("faketime is not installed (apt-get install faketime)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run(
        ["env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", offset, sys.executable, "-c", RESERVER, url],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("offset", ["+1d", "-1d", "+40d"])
def test_a_skewed_worker_reserves_against_the_databases_day(pg_url: str, offset: str) -> None:
    store = open_store(pg_url)
    try:
        ledger = Ledger(store)
        ledger.set_limit("tenant:acme/eu", "1.00", period="day", by="test")
        # Today's budget (the database's day) is almost gone, and a reservation is open.
        req = CostRequest(input_cost=Decimal("0.4"), output_price_per_token=Decimal("0"), output_cap=1)
        ledger.settle(ledger.reserve(run_id=None, scopes=["tenant:acme/eu"], cost=req), Decimal("0.4"))  # type: ignore[arg-type]
        held = ledger.reserve(run_id=None, scopes=["tenant:acme/eu"], cost=req, ttl_seconds=600)
        assert held is not None
        today = store.now()[:10]
        assert held.scopes == [("tenant:acme/eu", today)]

        # 0.8 of 1.00 is spent or held: the skewed worker's 0.5 does not fit today.
        assert _skewed(pg_url, offset) == "refused tenant:acme/eu"
        (usage,) = ledger.usage("tenant:acme/eu")
        assert usage.period_start == today and usage.spent == Decimal("0.4") and usage.reserved == Decimal("0.4")
        assert ledger.open_reservations() == 1  # the sweep of a worker a day ahead expired nothing
        assert not ledger.unknown_outcomes()

        # With room today, its reservation counts against today, and expires on the database's clock.
        ledger.settle(held, Decimal("0"))
        assert _skewed(pg_url, offset) == f"held {today}"
        ((expires,),) = store.read("SELECT expires_at FROM reservations")
        ttl = parse_iso(expires) - parse_iso(store.now())
        assert timedelta(seconds=500) < ttl <= timedelta(seconds=600), ttl
    finally:
        store.close()
