"""Runaway protection and resilience for the calls of a run (promise P2).

- Loop detection: :class:`LoopGuard` (the options) and :class:`LoopState` (one run's
  detectors over the :class:`Signature` / :class:`Outcome` stream of its guarded calls).
- Resilience: :class:`RetryPolicy`, :func:`timeout`, :class:`CircuitBreaker`, :class:`RateLimiter`.

All of it is pure in-process logic (no store, no engine); the call boundary wires it in.
"""

from .._errors import CircuitOpenError, RateLimitedError
from ._breaker import CircuitBreaker, Permit, Transition
from ._guard import LoopGuardGuard
from ._loop import LoopGuard, LoopState, Outcome, Signature, digest
from ._parse import Rate, parse_duration, parse_rate
from ._policies import Policies, PolicyGuard, policies
from ._ratelimit import RateLimiter
from ._retry import RetryPolicy, is_retryable, retry_after
from ._timeout import Timeout, timeout

__all__ = [
    "CircuitBreaker",
    "CircuitOpenError",
    "LoopGuard",
    "LoopGuardGuard",
    "LoopState",
    "Outcome",
    "Permit",
    "Policies",
    "PolicyGuard",
    "Rate",
    "RateLimitedError",
    "RateLimiter",
    "RetryPolicy",
    "Signature",
    "Timeout",
    "Transition",
    "digest",
    "is_retryable",
    "parse_duration",
    "parse_rate",
    "policies",
    "retry_after",
    "timeout",
]
