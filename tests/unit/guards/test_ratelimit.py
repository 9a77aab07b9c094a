"""Token buckets: the pure math, and the in-process limiter on a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import wflo
from wflo._errors import RateLimitedError, UserError
from wflo.guards import RateLimiter
from wflo.guards._ratelimit import Bucket, refill, take


def test_a_new_bucket_is_full_and_takes() -> None:
    b, wait = take(None, 10, capacity=60, per_second=1, now=100.0)
    assert (b, wait) == (Bucket(50, 100.0), 0.0)


def test_refill_is_continuous_and_capped() -> None:
    assert refill(Bucket(0, 0.0), capacity=60, per_second=1, now=30.0) == Bucket(30, 30.0)
    assert refill(Bucket(0, 0.0), capacity=60, per_second=1, now=1000.0) == Bucket(60, 1000.0)
    assert refill(Bucket(5, 10.0), capacity=60, per_second=1, now=5.0) == Bucket(5, 10.0)  # clock went back


def test_not_enough_says_how_long_to_wait_and_takes_nothing() -> None:
    b, wait = take(Bucket(2, 0.0), 5, capacity=60, per_second=0.5, now=0.0)
    assert b == Bucket(2, 0.0) and wait == 6.0


def test_more_than_capacity_waits_for_a_full_bucket_then_owes() -> None:
    b, wait = take(Bucket(40, 0.0), 150, capacity=100, per_second=10, now=0.0)
    assert wait == 6.0
    b, wait = take(b, 150, capacity=100, per_second=10, now=6.0)
    assert wait == 0.0 and b.tokens == -50


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s

    async def asleep(self, s: float) -> None:
        self.sleep(s)


def limiter(ft: FakeTime, **kw: Any) -> RateLimiter:
    return RateLimiter("openai", clock=ft.clock, sleep=ft.sleep, asleep=ft.asleep, **kw)


def test_requests_per_minute() -> None:
    ft = FakeTime()
    rl = limiter(ft, requests_per_minute=60)
    for _ in range(60):
        assert rl.acquire() == 0.0
    assert rl.try_acquire() == pytest.approx(1.0)
    assert rl.acquire() == pytest.approx(1.0) and ft.slept == [pytest.approx(1.0)]


def test_request_and_tokens_are_taken_together_or_not_at_all() -> None:
    ft = FakeTime()
    rl = limiter(ft, requests_per_minute=100, tokens_per_minute=6000)
    assert rl.try_acquire(5000) == 0.0
    assert rl.try_acquire(2000) == pytest.approx(10.0)  # 1000 short at 100 tokens/s
    for _ in range(10):  # the refused attempt took no request
        assert rl.try_acquire(0) == 0.0
    assert rl.acquire(2000) == pytest.approx(10.0)


def test_adjust_settles_the_real_usage() -> None:
    ft = FakeTime()
    rl = limiter(ft, tokens_per_minute=6000)
    rl.acquire(5000)  # estimated
    rl.adjust(-4000)  # used 1000: the rest comes back
    assert rl.try_acquire(5000) == 0.0
    rl.adjust(+500)  # used more than estimated
    assert rl.try_acquire(1) == pytest.approx(5.01)


def test_timeout_raises_rate_limited_without_waiting() -> None:
    ft = FakeTime()
    rl = limiter(ft, requests_per_minute=1)
    rl.acquire()
    with pytest.raises(RateLimitedError) as info:
        rl.acquire(timeout=10)
    assert info.value.key == "openai" and info.value.retry_after == pytest.approx(60.0)
    assert "1 requests/min" in str(info.value) and ft.slept == []


def test_async_acquire() -> None:
    ft = FakeTime()
    rl = limiter(ft, requests_per_minute=30)

    async def main() -> float:
        waited = 0.0
        for _ in range(31):
            waited += await rl.aacquire()
        return waited

    assert asyncio.run(main()) == pytest.approx(2.0)


def test_no_limits_never_wait() -> None:
    rl = RateLimiter("free")
    assert all(rl.acquire(10**9) == 0.0 for _ in range(1000))


@pytest.mark.parametrize(
    "kwargs", [{"requests_per_minute": 0}, {"tokens_per_minute": -5}, {"requests_per_minute": "60/min"}]
)
def test_bad_limits_are_user_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UserError):
        RateLimiter("k", **kwargs)


@pytest.mark.parametrize("rate", [float("nan"), float("inf")])
def test_a_rate_must_be_finite(rate: float) -> None:
    # NaN passed "<= 0" (every bucket then held NaN tokens); infinity is what None says.
    with pytest.raises(UserError, match=r"requests_per_minute=\.\.\.\) must be a finite, positive number or None"):
        RateLimiter("provider:openai", requests_per_minute=rate)
    with pytest.raises(UserError, match=r"rate_limit\(tokens_per_minute=\.\.\.\) must be a finite, positive number"):
        wflo.policies.rate_limit("provider:openai", tokens_per_minute=rate)
