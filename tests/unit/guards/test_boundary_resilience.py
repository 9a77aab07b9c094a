"""Retry policies and timeouts at the call boundary: each retry journaled, refusals never retried."""

from __future__ import annotations

import asyncio
import time

import pytest

import wflo
from wflo import _config


class _RateLimited(Exception):
    """Looks like an SDK's 429 with a Retry-After header."""

    status_code = 429

    def __init__(self) -> None:
        super().__init__("slow down")
        self.response = type("R", (), {"status_code": 429, "headers": {"retry-after": "0.2"}})()


def test_policy_retries_retryable_errors_and_honours_retry_after(configured: str) -> None:
    attempts: list[float] = []

    @wflo.step(retry=wflo.RetryPolicy(attempts=3, backoff=0.01, max_backoff=1))
    def call_api() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise _RateLimited()
        return "ok"

    @wflo.workflow(name="rp")
    def flow() -> str:
        return call_api()

    assert flow.options(id="rp").run() == "ok"
    assert attempts[1] - attempts[0] >= 0.19  # waited at least the Retry-After
    retries = [e.data for e in _config.get_store().events("rp") if e.type == "call.retry"]
    assert [r["attempt"] for r in retries] == [1, 2] and all(r["delay_s"] >= 0.2 for r in retries)


def test_policy_does_not_retry_a_bug(configured: str) -> None:
    calls = []

    @wflo.step(retry=wflo.RetryPolicy(attempts=5, backoff=0.01))
    def buggy() -> None:
        calls.append(1)
        raise ValueError("bad argument")

    @wflo.workflow(name="bug")
    def flow() -> None:
        buggy()

    with pytest.raises(ValueError, match="bad argument"):
        flow.run()
    assert calls == [1]


def test_budget_refusal_is_never_retried_even_with_retries(configured: str) -> None:
    calls = []

    @wflo.step(retries=5, retry_delay=0.001)
    def refuse() -> None:
        calls.append(1)
        raise wflo.BudgetExceededError(scope="run:x", limit=1, spent=1, reserved=0, requested=1)

    @wflo.workflow(name="refuse")
    def flow() -> None:
        refuse()

    with pytest.raises(wflo.BudgetExceededError):
        flow.run()
    assert calls == [1]


def test_timeouts_sync_and_async(configured: str) -> None:
    @wflo.step(timeout="100ms")
    def slow() -> None:
        time.sleep(2)

    @wflo.step(timeout=0.1)
    async def aslow() -> None:
        await asyncio.sleep(2)

    @wflo.workflow(name="to")
    def flow() -> None:
        slow()

    @wflo.workflow(name="ato")
    async def aflow() -> None:
        await aslow()

    start = time.monotonic()
    with pytest.raises(TimeoutError):
        flow.options(id="to").run()
    with pytest.raises(TimeoutError):
        asyncio.run(aflow.options(id="ato").arun())
    assert time.monotonic() - start < 1.5
    failed = [e.data for e in _config.get_store().events("to") if e.type == "call.failed"]
    from wflo.engine._serialize import rebuild_error

    assert len(failed) == 1 and isinstance(rebuild_error(failed[0]["error"], "slow"), TimeoutError)


def test_bad_retry_options_are_user_errors() -> None:
    with pytest.raises(wflo.UserError):
        wflo.step(retries=-1)(lambda: None)
    with pytest.raises(wflo.UserError):
        wflo.step(retries=2, retry=wflo.RetryPolicy())(lambda: None)
    with pytest.raises(wflo.UserError):
        wflo.step(retry="often")(lambda: None)
