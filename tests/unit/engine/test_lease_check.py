"""The run context's lease check before each call (``RunContext.ensure_lease``), on a stepped
monotonic clock: no round trip while the lease is fresh, a renewal when it may have lapsed, and
``LeaseLost`` (the call never starts) when the renewal shows the run is someone else's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import wflo
from wflo import _config
from wflo.engine import _context
from wflo.engine._context import LEASE_MARGIN, RunContext, current_run
from wflo.errors import LeaseLost

LEASE = 5.0  # the ``configured`` fixture's lease_seconds


class Clock:
    """``time.monotonic`` for the context, stepped by hand; far ahead of the real one, so the
    heartbeat thread's renewals (stamped on the real clock) never count for more."""

    def __init__(self) -> None:
        self.now = time.monotonic() + 100_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(_context, "monotonic", c)
    return c


def _counting(store: Any) -> list[tuple[str, list[str]]]:
    """Record each heartbeat the store is asked for (the real one still runs)."""
    calls: list[tuple[str, list[str]]] = []
    real = store.heartbeat

    def heartbeat(owner: str, run_ids: list[str], lease_seconds: float) -> dict[str, bool]:
        calls.append((owner, list(run_ids)))
        return real(owner, run_ids, lease_seconds)  # type: ignore[no-any-return]

    store.heartbeat = heartbeat
    return calls


def _context_of(run_id: str) -> RunContext:
    store = _config.get_store()
    record, _ = store.create_run(
        run_id=run_id, workflow="w", input={"args": [], "kwargs": {}}, owner="me", lease_seconds=LEASE
    )
    return RunContext(store, record, "me", {})


def _steal(store: Any, run_id: str, owner: str = "me") -> None:
    """Another worker takes the run (its lease lapsed while we were away)."""
    store.release(run_id, owner)
    assert store.claim(run_id, "other", LEASE).lease_owner == "other"


def test_fresh_lease_costs_no_round_trip_stale_one_renews(configured: str, clock: Clock) -> None:
    ctx = _context_of("fresh-1")
    calls = _counting(ctx.store)
    ctx.lease_renewed(clock.now)
    trusted = LEASE * (1 - LEASE_MARGIN)
    clock.now += trusted - 0.01
    for _ in range(100):
        ctx.ensure_lease()
    assert calls == []  # fresh: the fast path asks the store nothing
    clock.now += 0.02  # past the trusted part of the lease: it may have lapsed
    ctx.ensure_lease()
    assert calls == [("me", ["fresh-1"])]
    ctx.ensure_lease()  # renewed just now: fresh again
    assert len(calls) == 1
    clock.now += trusted + 0.01
    ctx.ensure_lease()
    assert len(calls) == 2


def test_unknown_lease_is_renewed_before_the_first_call(configured: str, clock: Clock) -> None:
    ctx = _context_of("unknown-1")  # nobody told the context when its lease was taken
    calls = _counting(ctx.store)
    ctx.ensure_lease()
    ctx.ensure_lease()
    assert len(calls) == 1


def test_stale_lease_taken_by_another_worker_raises_lease_lost(configured: str, clock: Clock) -> None:
    ctx = _context_of("taken-1")
    ctx.lease_renewed(clock.now)
    _steal(ctx.store, "taken-1")
    ctx.ensure_lease()  # still fresh by our clock: no round trip, no way to know yet
    clock.now += LEASE
    with pytest.raises(LeaseLost):
        ctx.ensure_lease()
    assert ctx.lease_lost
    with pytest.raises(LeaseLost):
        ctx.append([])  # given up: no more writes either


def test_renewal_that_fails_gives_the_run_up(configured: str, clock: Clock) -> None:
    ctx = _context_of("away-1")
    ctx.lease_renewed(clock.now)
    clock.now += LEASE

    def unreachable(*_: Any) -> dict[str, bool]:
        raise ConnectionError("the store is away")

    ctx.store.heartbeat = unreachable  # type: ignore[method-assign]
    try:
        with pytest.raises(LeaseLost) as info:
            ctx.ensure_lease()
    finally:
        del ctx.store.heartbeat
    assert isinstance(info.value.__cause__, ConnectionError)
    assert ctx.lease_lost


def test_a_step_never_starts_after_the_lease_lapsed_and_was_taken(configured: str, clock: Clock) -> None:
    """In a real run: the lease lapses (the clock jumps past it), another worker claims the
    run; the next step's body must not run. The old fence caught it only at the step's end."""
    ran: list[str] = []

    @wflo.step(name="lease_check.effect")
    def effect() -> str:
        ran.append("effect")
        return "done"

    @wflo.workflow(name="lease_check.flow")
    def flow() -> str:
        ctx = current_run()
        assert ctx is not None
        first = effect()
        _steal(ctx.store, ctx.run_id, ctx.owner)
        clock.now += LEASE
        return first + effect()

    with pytest.raises(LeaseLost):
        flow.run()
    assert ran == ["effect"]


def test_an_async_step_never_starts_after_the_lease_lapsed_and_was_taken(configured: str, clock: Clock) -> None:
    ran: list[str] = []

    @wflo.step(name="lease_check.aeffect")
    async def aeffect() -> str:
        ran.append("effect")
        return "done"

    @wflo.workflow(name="lease_check.aflow")
    async def aflow() -> str:
        ctx = current_run()
        assert ctx is not None
        first = await aeffect()
        await ctx.store.off_loop(_steal, ctx.store, ctx.run_id, ctx.owner, key=ctx.run_id)
        clock.now += LEASE
        return first + await aeffect()

    with pytest.raises(LeaseLost):
        asyncio.run(aflow.arun())
    assert ran == ["effect"]
