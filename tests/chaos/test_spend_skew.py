"""Issue 20: a call charged by a worker whose clock runs 3 h behind the database (libfaketime)
is in the spend book in the database's hour, so a costs window on the store's clock counts it
(a rollup folded by event time with a lag would never have)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from wflo.cost._ledger import Ledger
from wflo.cost._spend import journal_spend, spend
from wflo.store import open_store

WRITER = """
import sys, time
from decimal import Decimal
from wflo.cost._ledger import Booking, CostRequest, Ledger
from wflo.store import Head, NewEvent, open_store

store = open_store(sys.argv[1])
ledger = Ledger(store)
run, _ = store.create_run(run_id="skewed", workflow="wf", input={}, owner="w", tenant="acme")
req = CostRequest(input_cost=Decimal("0.001"), output_price_per_token=Decimal("0.00001"), output_cap=100)
res = ledger.reserve(run_id="skewed", scopes=["global"], cost=req, call_id="1", model="m")
head = Head(run.last_seq, run.last_hash)
head = store.append("skewed", head, [NewEvent("call.completed", {"call": "1", "kind": "llm", "name": "m",
                    "cost_usd": "0.0015"})], ops=[ledger.settle_op(res, Decimal("0.0015"), lambda: Booking("m"))],
                    owner="w")
store.append("skewed", head, [NewEvent("call.completed", {"call": "2", "kind": "llm", "name": "free",
             "cost_usd": "0.0002"})], ops=[ledger.book_op("skewed", Decimal("0.0002"), lambda: Booking("free"))],
             owner="w")
print(time.time())
"""


@pytest.mark.slow
def test_a_writer_3h_behind_is_booked_in_the_databases_hour(pg_url: str) -> None:
    if shutil.which("faketime") is None:
        if os.environ.get("CI"):
            pytest.fail("faketime is required in CI (apt-get install faketime)")
        pytest.skip("faketime is not installed (apt-get install faketime)")
    store = open_store(pg_url)
    try:
        Ledger(store).set_limit("global", "10")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        before = store.now()
        done = subprocess.run(
            ["env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", "-3h", sys.executable, "-c", WRITER, pg_url],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert time.time() - float(done.stdout) > 3 * 3600 - 60  # the writer's clock really was behind
        after = store.now()
        events = [e for e in store.events("skewed") if e.type == "call.completed"]
        assert all(e.at < (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H") for e in events)
        booked = spend(store, "hour")
        assert {r["key"] for r in booked["rows"]} <= {before[:13] + ":00", after[:13] + ":00"}
        assert booked["total"]["calls"] == 2 and booked["total"]["cost_usd"] == "0.0017"
        since = (datetime.now(UTC) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert spend(store, "model", since=since)["total"]["calls"] == 2
        assert journal_spend(store, "model", since=since)["total"]["calls"] == 0  # the writer's stamps
        assert Ledger(store).usage("global")[0].spent == Decimal("0.0015")
    finally:
        store.close()
