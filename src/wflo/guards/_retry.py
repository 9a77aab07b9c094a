"""Retries with exponential backoff and full jitter, and which errors deserve one.

Classification (:func:`is_retryable`), first rule that applies:

1. Never: control-flow signals and anything that is not an ``Exception`` (``WfloInterrupt``,
   ``KeyboardInterrupt``, ``asyncio.CancelledError``), and wflo's own refusals
   (``BudgetExceededError``, ``LoopDetectedError``, ``ApprovalRejected``, every other
   ``WfloError``) except the two that say "later": ``RateLimitedError`` and ``CircuitOpenError``.
2. An HTTP status, found by duck typing (``error.status_code``, ``error.status``,
   ``error.response.status_code``) so openai, anthropic, httpx and requests errors work without
   importing them: 408, 409, 429 and 5xx are retryable; every other status is not.
3. Timeouts and connection failures: ``TimeoutError``, ``ConnectionError``, and classes named
   like the SDKs' (``APIConnectionError``, ``APITimeoutError``, httpx ``TransportError``…).
4. Anything else is a bug or a refusal, not a blip: not retried (retrying costs money).

A ``Retry-After`` (or OpenAI's ``retry-after-ms``) header on the error's response, in seconds
or as an HTTP date, is the least delay before the next attempt; if it is longer than
``max_backoff`` the error is raised instead (wflo neither retries sooner than the server
asked nor sleeps longer than you allowed).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from .._errors import CircuitOpenError, RateLimitedError, UserError, WfloError

__all__ = ["RetryPolicy", "is_retryable", "retry_after", "status_code"]

T = TypeVar("T")
OnRetry = Callable[[int, BaseException, float], Any]
"""``on_retry(attempt, error, delay)``: ``attempt`` (1-based) failed with ``error``; the next starts in ``delay`` s."""

_TRANSIENT_NAMES = frozenset(
    {
        "APIConnectionError", "APITimeoutError",  # openai, anthropic
        "TransportError", "TimeoutException", "NetworkError", "ConnectError", "ReadError", "WriteError",
        "RemoteProtocolError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout",  # httpx
        "ConnectionError", "Timeout", "ChunkedEncodingError",  # requests (not the builtin classes)
        "ServerDisconnectedError", "ClientConnectionError",  # aiohttp
    }
)  # fmt: skip
_RETRYABLE_4XX = frozenset({408, 409, 429})


def retryable_status(status: int) -> bool:
    """Whether an HTTP status means "try again later": 408, 409, 429 or any 5xx."""
    return status in _RETRYABLE_4XX or status >= 500


def status_code(error: BaseException) -> int | None:
    """The HTTP status an error carries (``status_code``, ``status`` or ``response.status_code``)."""
    for holder in (error, getattr(error, "response", None)):
        if holder is None:
            continue
        for attr in ("status_code", "status"):
            value = getattr(holder, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
    return None


def _never(error: BaseException) -> bool:
    if not isinstance(error, Exception):
        return True
    return isinstance(error, WfloError) and not isinstance(error, RateLimitedError | CircuitOpenError)


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is transient (see the module docstring for the rules)."""
    if _never(error):
        return False
    if isinstance(error, WfloError):
        return True  # RateLimitedError, CircuitOpenError: "later", with a time
    status = status_code(error)
    if status is not None:
        return retryable_status(status)
    if isinstance(error, TimeoutError | ConnectionError):
        return True
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(error).__mro__)


def _header(headers: Any, name: str) -> Any:
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    value = getter(name)
    if value is None:
        value = getter(name.title())
    if value is None and isinstance(headers, dict):  # a plain dict with another spelling
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return value


def retry_after(error: BaseException, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the error asks to wait before trying again, or ``None`` if it does not say.

    Reads ``RateLimitedError.retry_after``, ``CircuitOpenError.retry_at`` (epoch seconds) and the
    ``retry-after-ms`` / ``Retry-After`` headers (seconds or HTTP date) of ``error.response``
    or ``error.headers``.
    """
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        return max(0.0, float(error.retry_after))
    if isinstance(error, CircuitOpenError) and isinstance(error.retry_at, int | float):
        return max(0.0, float(error.retry_at) - now())
    response = getattr(error, "response", None)
    for headers in (getattr(response, "headers", None), getattr(error, "headers", None)):
        ms = _header(headers, "retry-after-ms")
        if ms is not None:
            try:
                return max(0.0, float(ms) / 1000)
            except ValueError:
                pass
        value = _header(headers, "retry-after")
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(str(value)).timestamp() - now())
        except (TypeError, ValueError, IndexError):
            continue  # an unreadable header is as good as none
    return None


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Retry transient failures with exponential backoff and full jitter.

    The delay before retry ``n`` (1-based) is uniform in ``[0, min(max_backoff, backoff * 2**(n-1))]``
    with ``jitter`` (AWS's "full jitter": retries of many clients spread out instead of
    arriving together), or exactly that cap without it; a ``Retry-After`` is the least delay.

    Use ``policy.call(fn, *args, **kwargs)``, ``await policy.acall(fn, ...)`` or ``@policy``.
    """

    attempts: int = 3
    """Attempts in all, the first included (``1`` = no retry)."""
    backoff: float = 0.5
    """Base delay in seconds; doubles with each retry."""
    max_backoff: float = 30.0
    """Largest delay in seconds; a longer ``Retry-After`` ends the retries."""
    jitter: bool = True
    """Full jitter (random delay up to the exponential cap) instead of the cap itself."""
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool | None] | None = None
    """``None``: :func:`is_retryable`. A tuple of exception classes: retry exactly those. A
    function ``error -> bool | None``: its answer, ``None`` falling back to :func:`is_retryable`.
    Rule 1 (signals and wflo's refusals) holds whatever ``retry_on`` says."""
    sleep: Callable[[float], Any] = field(default=time.sleep, repr=False, compare=False)
    """How ``call`` waits (tests inject a fake)."""
    asleep: Callable[[float], Awaitable[Any]] = field(default=asyncio.sleep, repr=False, compare=False)
    """How ``acall`` waits."""
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    """Epoch seconds, to read ``Retry-After`` dates."""
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    """Uniform in [0, 1), for the jitter."""

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool) or self.attempts < 1:
            raise UserError(f"RetryPolicy(attempts=...) must be an integer >= 1, got {self.attempts!r}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            # NaN compares false with everything: it would pass "< 0" and sleep(nan) raises later.
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise UserError(f"RetryPolicy({name}=...) must be a finite number of seconds >= 0, got {value!r}")
        if self.max_backoff < self.backoff:
            raise UserError(f"RetryPolicy: max_backoff ({self.max_backoff}) is below backoff ({self.backoff})")
        retry_on = self.retry_on
        if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
            object.__setattr__(self, "retry_on", (retry_on,))  # retry_on=TimeoutError: as the tuple
        elif isinstance(retry_on, tuple):
            if not all(isinstance(c, type) and issubclass(c, BaseException) for c in retry_on):
                raise UserError(f"RetryPolicy(retry_on=...) takes exception classes, got {retry_on!r}")
        elif retry_on is not None and not callable(retry_on):
            raise UserError(
                f"RetryPolicy(retry_on=...) takes a tuple of exception classes or a function of the error, got {retry_on!r}"
            )

    def should_retry(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt under this policy."""
        if _never(error):
            return False  # whatever retry_on says: a refusal or a signal is final
        if self.retry_on is None:
            return is_retryable(error)
        if isinstance(self.retry_on, tuple):
            return isinstance(error, self.retry_on)
        answer = self.retry_on(error)
        return is_retryable(error) if answer is None else bool(answer)

    def backoff_cap(self, attempt: int) -> float:
        """The largest delay after failed attempt ``attempt`` (1-based)."""
        return float(min(self.max_backoff, self.backoff * 2 ** min(attempt - 1, 64)))

    def next_delay(self, attempt: int, error: BaseException) -> float | None:
        """Seconds to wait after attempt ``attempt`` failed with ``error``; ``None``: give up."""
        if attempt >= self.attempts or not self.should_retry(error):
            return None
        cap = self.backoff_cap(attempt)
        delay = self.random() * cap if self.jitter else cap
        asked = retry_after(error, self.clock)
        if asked is not None:
            if asked > self.max_backoff:
                return None
            delay = max(delay, asked)
        return delay

    def call(self, fn: Callable[..., T], /, *args: Any, on_retry: OnRetry | None = None, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried; ``on_retry(attempt, error, delay)`` before each wait.

        Raises:
            The last error, once attempts run out or it is not retryable (or whatever
            ``on_retry`` raises, which ends the retries).
        """
        attempt = 1
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                delay = self.next_delay(attempt, exc)
                if delay is None:
                    raise
                if on_retry is not None:
                    on_retry(attempt, exc, delay)
            self.sleep(delay)
            attempt += 1

    async def acall(
        self, fn: Callable[..., Awaitable[T]], /, *args: Any, on_retry: OnRetry | None = None, **kwargs: Any
    ) -> T:
        """The async twin of :meth:`call` (``fn`` returns an awaitable; waits with ``asleep``)."""
        attempt = 1
        while True:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                delay = self.next_delay(attempt, exc)
                if delay is None:
                    raise
                if on_retry is not None:
                    on_retry(attempt, exc, delay)
            await self.asleep(delay)
            attempt += 1

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate a sync or async function so every call of it is retried."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper
