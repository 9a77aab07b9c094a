"""Waits wake promptly, on both stores: an approval decided by another thread wakes the
waiting run (sync ``run`` and async ``arun``), and an approval's timer (its timeout, the
engine's durable timer) wakes it on time.

Each test takes the median of ``SAMPLES`` waits: within 50 ms on SQLite (its change feed reads
``PRAGMA data_version`` every 10 ms) and within ``PG_BOUND`` on PostgreSQL (``LISTEN/NOTIFY``).
``poll_interval`` is set far above both, so a wait that fell back to polling fails.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

import wflo
from wflo import _config
from wflo.approvals import approvals
from wflo.store import parse_iso

SAMPLES = 10
POLL = 5.0
# The goal is 10 ms; on a loaded 2-core test machine PostgreSQL's median decision wake measured
# 8-20 ms (a wake is a NOTIFY, a read, a claim and the run's replay): 50 ms still catches a
# fall back to polling (POLL seconds).
PG_BOUND = 0.05


@pytest.fixture
def waiting(configured: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:owner")
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=POLL)
    return configured


def _check(url: str, what: str, latencies: list[float]) -> None:
    latencies = sorted(latencies)
    median = latencies[len(latencies) // 2]
    bound = 0.05 if url.startswith("sqlite") else PG_BOUND
    shown = [round(x * 1000, 1) for x in latencies]
    print(f"{what} on {url.split(':')[0]}: median {median * 1000:.1f} ms (all: {shown})")
    assert median < bound, f"{what} woke after {median * 1000:.1f} ms (all: {shown})"


def _pending(run_id: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = approvals.list(run_id=run_id)
        if found and _config.get_store().get_run(run_id).status == "waiting":
            return found[0].id
        time.sleep(0.01)
    raise AssertionError(f"run {run_id} never asked for its approval")


def _decide(run_id: str) -> float:
    """Approve the run's request once it waits; the moment the decision was committed."""
    approval_id = _pending(run_id)
    time.sleep(0.1)  # the run's waiter is on the change feed now
    approvals.approve(approval_id, principal="user:bob")
    return time.perf_counter()


def test_a_decision_wakes_a_waiting_sync_run(waiting: str) -> None:
    woke: dict[str, float] = {}

    @wflo.workflow(name="wake-decision-sync")
    def flow(key: str) -> bool:
        decision = wflo.approval("go?", approvers=["user:bob"])
        woke[key] = time.perf_counter()
        return decision.approved

    latencies = []
    for i in range(SAMPLES):
        key = f"wds-{i}"
        results: list[Any] = []
        runner = threading.Thread(target=lambda k=key, r=results: r.append(flow.options(id=k).run(k)))
        runner.start()
        decided = _decide(key)
        runner.join(10)
        assert results == [True]
        latencies.append(woke[key] - decided)
    _check(waiting, "a decision waking a sync run", latencies)


def test_a_decision_wakes_a_waiting_async_run(waiting: str) -> None:
    woke: dict[str, float] = {}

    @wflo.workflow(name="wake-decision-async")
    async def flow(key: str) -> bool:
        decision = await wflo.aapproval("go?", approvers=["user:bob"])
        woke[key] = time.perf_counter()
        return decision.approved

    async def one(key: str) -> float:
        running = asyncio.create_task(flow.options(id=key).arun(key))
        decided = await asyncio.to_thread(_decide, key)
        assert await asyncio.wait_for(running, 10) is True
        return woke[key] - decided

    latencies = [asyncio.run(one(f"wda-{i}")) for i in range(SAMPLES)]
    _check(waiting, "a decision waking an async run", latencies)


TIMER = 0.3


def _lateness(run_id: str, woke: datetime) -> float:
    (req,) = approvals.list(run_id=run_id, status=None)
    assert req.status == "approved" and req.decided_by == "policy:timeout"
    assert req.timeout_at is not None
    late = (woke - parse_iso(req.timeout_at)).total_seconds()
    assert late >= 0, "the timer fired early"
    return late


def test_a_timer_wakes_a_sync_run_on_time(waiting: str) -> None:
    woke: dict[str, datetime] = {}

    @wflo.workflow(name="wake-timer-sync")
    def flow(key: str) -> bool:
        decision = wflo.approval("go?", approvers=["user:bob"], timeout=TIMER, on_timeout="approve")
        woke[key] = datetime.now(UTC)
        return decision.approved

    latencies = []
    for i in range(SAMPLES):
        key = f"wts-{i}"
        assert flow.options(id=key).run(key) is True
        latencies.append(_lateness(key, woke[key]))
    _check(waiting, "a timer waking a sync run", latencies)


def test_a_timer_wakes_an_async_run_on_time(waiting: str) -> None:
    woke: dict[str, datetime] = {}

    @wflo.workflow(name="wake-timer-async")
    async def flow(key: str) -> bool:
        decision = await wflo.aapproval("go?", approvers=["user:bob"], timeout=TIMER, on_timeout="approve")
        woke[key] = datetime.now(UTC)
        return decision.approved

    latencies = []
    for i in range(SAMPLES):
        key = f"wta-{i}"
        assert asyncio.run(flow.options(id=key).arun(key)) is True
        latencies.append(_lateness(key, woke[key]))
    _check(waiting, "a timer waking an async run", latencies)
