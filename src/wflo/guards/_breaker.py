"""A circuit breaker: stop calling a dependency that keeps failing, probe it now and then.

::

    closed ──(failure_threshold consecutive failures)──► open
    open ──(reset_timeout elapsed; the next caller is the probe)──► half_open
    half_open ──(probe succeeds)──► closed
    half_open ──(probe fails)──► open (for another reset_timeout)

While open, calls are refused with ``CircuitOpenError(key, retry_at)`` without running. In
half-open exactly one call (the probe) runs, however many threads or asyncio tasks ask at
once; the others are refused until it ends. A result reported by a call admitted before the
last transition (a slow call that started while the circuit was closed) changes nothing.

What counts as a failure is ``is_failure(error)``, by default :func:`is_retryable`: timeouts,
connection errors, 5xx, 429, i.e. signs that the dependency is unwell. A 400 or a bug in
the caller's code says nothing about the dependency and is neutral (it neither counts nor
resets the count; a neutral probe lets the next caller probe).

The lock is a ``threading.Lock`` held for a few instructions and never across an ``await``,
so the breaker is safe for threads and asyncio tasks alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .._errors import CircuitOpenError, UserError
from ._retry import is_retryable

__all__ = ["CircuitBreaker", "Permit", "Transition"]

log = logging.getLogger("wflo")
T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a breaker's state, as reported to ``on_transition`` (journal it as an event)."""

    key: str
    old: str
    """``"closed"``, ``"open"`` or ``"half_open"``."""
    new: str
    at: float
    """Clock time of the change."""
    failures: int
    """Consecutive failures counted when it happened."""
    retry_at: float | None
    """When the open circuit admits its next probe (``None`` unless ``new == "open"``)."""


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call, from :meth:`CircuitBreaker.allow`; hand it back to ``report``."""

    generation: int
    probe: bool


class CircuitBreaker:
    """Per-dependency circuit breaker (one per ``key``, e.g. ``"openai"`` or ``"tool:search"``).

    Args:
        key: names the dependency in errors and transitions.
        failure_threshold: consecutive failures that open the circuit.
        reset_timeout: seconds the circuit stays open before admitting a probe.
        is_failure: which errors count (default :func:`is_retryable`).
        on_transition: called with each :class:`Transition`, in order, under the breaker's
            lock (keep it quick; an error in it is logged, not raised).
        clock: epoch seconds (``CircuitOpenError.retry_at`` is on this clock).
    """

    def __init__(
        self,
        key: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        is_failure: Callable[[BaseException], bool] = is_retryable,
        on_transition: Callable[[Transition], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(failure_threshold, int) or isinstance(failure_threshold, bool) or failure_threshold < 1:
            raise UserError(f"CircuitBreaker(failure_threshold=...) must be an integer >= 1, got {failure_threshold!r}")
        if not isinstance(reset_timeout, int | float) or isinstance(reset_timeout, bool) or reset_timeout < 0:
            raise UserError(f"CircuitBreaker(reset_timeout=...) must be seconds >= 0, got {reset_timeout!r}")
        self.key = key
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        self._is_failure = is_failure
        self._on_transition = on_transition
        self._clock = clock
        self._lock = threading.RLock()  # re-entrant: on_transition may read the state
        self._state = CLOSED
        self._generation = 0
        self._failures = 0
        self._retry_at: float | None = None
        self._probing = False

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.key!r}, state={self._state!r}, failures={self._failures})"

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open turns half-open at the next ``allow``)."""
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far."""
        return self._failures

    @property
    def retry_at(self) -> float | None:
        """When an open circuit admits its next probe."""
        return self._retry_at

    # ------------------------------------------------------------------ the protocol
    def allow(self) -> Permit:
        """Ask to make a call (the boundary's *before*).

        Raises:
            CircuitOpenError: the circuit is open, or half-open with its probe in flight.
        """
        with self._lock:
            if self._state == CLOSED:
                return Permit(self._generation, probe=False)
            now = self._clock()
            if self._state == OPEN:
                assert self._retry_at is not None
                if now < self._retry_at:
                    raise CircuitOpenError(key=self.key, retry_at=self._retry_at)
                self._move(HALF_OPEN, now)
            if self._probing:
                raise CircuitOpenError(key=self.key, retry_at=now)
            self._probing = True
            return Permit(self._generation, probe=True)

    def report(self, permit: Permit, error: BaseException | None = None) -> None:
        """Say how a permitted call ended (the boundary's *after*): ``error=None`` for success."""
        with self._lock:
            if permit.generation != self._generation:
                return  # admitted before the last transition: stale news
            if error is not None and not (isinstance(error, Exception) and self._is_failure(error)):
                if permit.probe:
                    self._probing = False  # neutral: the next caller probes
                return
            now = self._clock()
            if error is None:
                self._failures = 0
                if self._state == HALF_OPEN:
                    self._move(CLOSED, now)
                return
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
                self._move(OPEN, now)

    def _move(self, new: str, now: float) -> None:
        old, self._state = self._state, new
        self._generation += 1
        self._probing = False
        self._retry_at = now + self.reset_timeout if new == OPEN else None
        if new == CLOSED:
            self._failures = 0
        if self._on_transition is not None:
            try:
                self._on_transition(Transition(self.key, old, new, now, self._failures, self._retry_at))
            except Exception:  # a failing event sink must not break the call path
                log.exception("circuit %s: on_transition failed", self.key)

    # ------------------------------------------------------------------ wrappers
    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` through the breaker.

        Raises:
            CircuitOpenError: refused without calling ``fn``.
        """
        permit = self.allow()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.report(permit, exc)
            raise
        self.report(permit)
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """The async twin of :meth:`call` (a cancelled probe is neutral: someone else probes)."""
        permit = self.allow()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.report(permit, exc)
            raise
        self.report(permit)
        return result
