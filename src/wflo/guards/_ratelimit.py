"""Token buckets: requests per minute and tokens per minute, in process.

The arithmetic is two pure functions on an immutable :class:`Bucket` (:func:`refill`,
:func:`take`), so a limiter shared through the store can run the very same math inside a
transaction on a row ``(tokens, updated_at)``. :class:`RateLimiter` holds the buckets of one
key in memory, behind a lock, for one process.

A bucket starts full (a minute's worth: providers allow a burst too) and refills
continuously. A request larger than the whole bucket (a 150k-token prompt under a 100k TPM
limit) is let through once the bucket is full and leaves it in debt, rather than never.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .._errors import RateLimitedError, UserError

__all__ = ["Bucket", "RateLimiter", "charge", "check_rates", "describe", "refill", "take"]


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket's state: what is in it and when that was computed."""

    tokens: float
    updated_at: float


def refill(bucket: Bucket | None, *, capacity: float, per_second: float, now: float) -> Bucket:
    """The bucket at ``now``: topped up by ``per_second`` since it was updated, up to ``capacity``.

    ``None`` (never used) is a full bucket. A clock that went backwards adds nothing.
    """
    if bucket is None:
        return Bucket(capacity, now)
    elapsed = max(0.0, now - bucket.updated_at)
    return Bucket(min(capacity, bucket.tokens + elapsed * per_second), max(now, bucket.updated_at))


def take(
    bucket: Bucket | None, amount: float, *, capacity: float, per_second: float, now: float
) -> tuple[Bucket, float]:
    """Refill, then take ``amount`` if it is there.

    Returns:
        ``(bucket, 0.0)`` with ``amount`` taken, or ``(bucket, wait)``: nothing taken, and
        ``wait`` seconds until it would be (``amount`` above ``capacity`` waits for a full
        bucket and then takes it all, leaving a debt).
    """
    b = refill(bucket, capacity=capacity, per_second=per_second, now=now)
    need = min(amount, capacity)
    if b.tokens >= need:
        return Bucket(b.tokens - amount, b.updated_at), 0.0
    return b, (need - b.tokens) / per_second


def charge(bucket: Bucket | None, amount: float, *, capacity: float, per_second: float, now: float) -> Bucket:
    """Refill, then take ``amount`` whatever is there (negative: give it back), never above
    ``capacity``: the correction after a call used more or fewer tokens than estimated."""
    b = refill(bucket, capacity=capacity, per_second=per_second, now=now)
    return Bucket(min(capacity, b.tokens - amount), b.updated_at)


def check_rates(where: str, requests_per_minute: Any, tokens_per_minute: Any) -> None:
    """Refuse a rate that is not a positive number (``None`` means no limit)."""
    for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
        # NaN passed "<= 0" and made every bucket NaN; infinity is what None already says.
        if value is not None and (
            not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0
        ):
            raise UserError(f"{where}({name}=...) must be a finite, positive number or None, got {value!r}")


def describe(requests_per_minute: float | None, tokens_per_minute: float | None) -> str:
    """``"500 requests/min and 200000 tokens/min"`` (``"none"`` without a limit)."""
    parts = []
    if requests_per_minute is not None:
        parts.append(f"{requests_per_minute:g} requests/min")
    if tokens_per_minute is not None:
        parts.append(f"{tokens_per_minute:g} tokens/min")
    return " and ".join(parts) or "none"


class RateLimiter:
    """In-process limits for one key (a provider, a model, a tool).

    ``limiter.acquire(tokens=estimate)`` before the call waits until both the request and
    the token buckets allow it (or raises ``RateLimitedError`` if that is longer than
    ``timeout``); ``limiter.adjust(actual - estimate)`` after it corrects the token bucket.

    Args:
        key: names the limit in errors.
        requests_per_minute: requests allowed per minute (``None``: no limit).
        tokens_per_minute: tokens allowed per minute (``None``: no limit).
        clock: monotonic seconds; ``sleep``/``asleep``: how to wait (tests inject fakes).
    """

    def __init__(
        self,
        key: str,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
        asleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        check_rates("RateLimiter", requests_per_minute, tokens_per_minute)
        self.key = key
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        self._asleep = asleep
        self._lock = threading.Lock()
        self._requests: Bucket | None = None
        self._tokens: Bucket | None = None

    def __repr__(self) -> str:
        return f"RateLimiter({self.key!r}, rpm={self.requests_per_minute}, tpm={self.tokens_per_minute})"

    def _limit(self) -> str:
        return describe(self.requests_per_minute, self.tokens_per_minute)

    def try_acquire(self, tokens: float = 0) -> float:
        """Take one request and ``tokens`` tokens if both are there (all or nothing).

        Returns:
            0.0 if taken, else the seconds to wait before trying again (nothing taken).
        """
        with self._lock:
            now = self._clock()
            wait = 0.0
            req = tok = None
            if self.requests_per_minute is not None:
                rpm = float(self.requests_per_minute)
                req, w = take(self._requests, 1, capacity=rpm, per_second=rpm / 60, now=now)
                wait = max(wait, w)
            if self.tokens_per_minute is not None and tokens > 0:
                tpm = float(self.tokens_per_minute)
                tok, w = take(self._tokens, tokens, capacity=tpm, per_second=tpm / 60, now=now)
                wait = max(wait, w)
            if wait > 0:
                return wait
            self._requests = req if req is not None else self._requests
            self._tokens = tok if tok is not None else self._tokens
            return 0.0

    def adjust(self, tokens: float) -> None:
        """After the call: take ``tokens`` more (positive) or give them back (negative)."""
        if self.tokens_per_minute is None or not tokens:
            return
        with self._lock:
            tpm = float(self.tokens_per_minute)
            self._tokens = charge(self._tokens, tokens, capacity=tpm, per_second=tpm / 60, now=self._clock())

    def _refuse(self, wait: float) -> RateLimitedError:
        return RateLimitedError(key=self.key, limit=self._limit(), retry_after=round(wait, 3))

    def acquire(self, tokens: float = 0, *, timeout: float | None = None) -> float:
        """Wait until one request and ``tokens`` tokens are allowed, and take them.

        Args:
            timeout: longest total wait in seconds (``None``: as long as it takes; ``0``: never wait).

        Returns:
            Seconds waited.

        Raises:
            RateLimitedError: the wait would exceed ``timeout`` (nothing is taken).
        """
        waited = 0.0
        while (wait := self.try_acquire(tokens)) > 0:
            if timeout is not None and waited + wait > timeout:
                raise self._refuse(wait)
            self._sleep(wait)
            waited += wait
        return waited

    async def aacquire(self, tokens: float = 0, *, timeout: float | None = None) -> float:
        """The async twin of :meth:`acquire`."""
        waited = 0.0
        while (wait := self.try_acquire(tokens)) > 0:
            if timeout is not None and waited + wait > timeout:
                raise self._refuse(wait)
            await self._asleep(wait)
            waited += wait
        return waited
