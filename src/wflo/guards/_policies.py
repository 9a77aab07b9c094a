"""Resilience policies by target, wired into every run's guard chain.

``wflo.policies.breaker("model:gpt-4o", failures=5, reset="30s")`` and
``wflo.policies.rate_limit("provider:openai", requests_per_minute=500, tokens_per_minute=200_000)``
apply to every matching guarded call of every run in the process: intercepted LLM calls
(targets ``model:NAME`` and ``provider:NAME``), tools (``tool:NAME``), steps (``step:NAME``) and
sandbox runs (``sandbox:BACKEND``); ``NAME`` may be ``*``.

- A **circuit breaker** is per process (it reacts to what this process sees). A call counts as
  failed when it raises a retryable error or, for an LLM call, when the provider answers 429 or
  5xx. An open circuit refuses the call (``CircuitOpenError``) before anything is sent; each
  state change is a ``breaker.transition`` event in the run that caused it.
- A **rate limit** is shared by every process on the store: its token buckets are rows of
  ``rate_buckets`` (``wflo.guards._tables``), taken in a transaction and refilled on the
  store's clock, so three workers with ``requests_per_minute=60`` send 60 a minute between
  them, not 180. A call waits for its turn (a ``rate_limit`` field in
  its event says how long) up to ``max_wait``, then fails with ``RateLimitedError``. Tokens are
  estimated before the call (request bytes / 4 + its output cap) and corrected from the
  reported usage after it.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from .._errors import UserError
from ..engine import Call, Guard, Outcome
from ..engine._attempts import pause
from ..store import NewEvent
from . import _tables as tables
from ._breaker import CircuitBreaker, Transition
from ._parse import parse_duration
from ._ratelimit import Bucket, charge, check_rates, describe, take
from ._retry import RetryPolicy, is_retryable

KINDS = ("model", "provider", "tool", "step", "sandbox")
_pending: contextvars.ContextVar[list[Transition] | None] = contextvars.ContextVar("wflo_breaker_pending", default=None)


class ProviderStatusError(Exception):
    """An LLM call answered with a retryable HTTP status (what a breaker counts as a failure)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"provider answered HTTP {status}")
        self.status_code = status


class _NotACall(BaseException):
    """Reported for a permit whose call never ran (a breaker counts it as neither outcome)."""


_NEUTRAL = _NotACall()


def _is_failure(error: BaseException) -> bool:
    return isinstance(error, ProviderStatusError) or is_retryable(error)


def _check_target(target: Any) -> str:
    if (
        not isinstance(target, str)
        or ":" not in target
        or target.split(":", 1)[0] not in KINDS
        or not target.split(":", 1)[1]
    ):
        raise UserError(
            f"a policy target is KIND:NAME with KIND one of {', '.join(KINDS)} (NAME may be *), got {target!r}"
        )
    return target


def _keys(call: Call) -> list[str]:
    if call.kind == "llm":
        return [f"model:{call.name}", f"provider:{call.meta.get('provider', '')}"]
    short = call.name.rsplit(".", 1)[-1]  # steps are named module.qualname; "step:fetch" matches too
    return [f"{call.kind}:{call.name}", f"{call.kind}:{short}"]


def _matches(target: str, keys: list[str]) -> bool:
    kind, name = target.split(":", 1)
    return any(k == target or (name == "*" and k.startswith(kind + ":")) for k in keys)


@dataclass(frozen=True)
class SharedRateLimit:
    """Requests and tokens per minute for one target, in the store (all processes share it)."""

    target: str
    requests_per_minute: float | None
    tokens_per_minute: float | None
    max_wait: float

    def _buckets(self, tokens: float) -> list[tuple[str, float, float]]:
        out = []
        if self.requests_per_minute is not None:
            out.append((f"{self.target}#requests", 1.0, float(self.requests_per_minute)))
        if self.tokens_per_minute is not None and tokens > 0:
            out.append((f"{self.target}#tokens", tokens, float(self.tokens_per_minute)))
        return out

    def try_take(self, store: Any, tokens: float) -> float:
        """Take one request and ``tokens`` (all or nothing); 0.0 if taken, else seconds to wait."""
        buckets = self._buckets(tokens)
        if not buckets:
            return 0.0

        def txn(cur: Any) -> float:
            now = tables.clock(store, cur)
            taken: list[tuple[str, Bucket]] = []
            wait = 0.0
            for key, amount, per_minute in sorted(buckets):  # a fixed lock order
                row = tables.lock_or_fill(store, cur, key, capacity=per_minute, now=now)
                bucket, w = take(row, amount, capacity=per_minute, per_second=per_minute / 60, now=now)
                wait = max(wait, w)
                taken.append((key, bucket))
            if wait > 0:
                return wait
            for key, bucket in taken:
                tables.save_bucket(store, cur, key, bucket)
            return 0.0

        result: float = store.write(txn)
        return result

    def acquire(self, store: Any, tokens: float) -> float:
        """Wait for a turn (up to ``max_wait``); returns the seconds waited."""
        waited = 0.0
        while (wait := self.next_wait(store, tokens, waited)) > 0:
            time.sleep(wait)
            waited += wait
        return waited

    def next_wait(self, store: Any, tokens: float, waited: float) -> float:
        """Take a turn: 0.0 once taken, else the seconds to wait before trying again; raises
        ``RateLimitedError`` when that wait would take the ``waited`` seconds past ``max_wait``."""
        from .._errors import RateLimitedError

        wait = self.try_take(store, tokens)
        if wait > 0 and waited + wait > self.max_wait:
            limit = describe(self.requests_per_minute, self.tokens_per_minute)
            raise RateLimitedError(key=self.target, limit=limit, retry_after=round(wait, 3))
        return wait

    def adjust(self, store: Any, tokens: float) -> None:
        """After the call: take ``tokens`` more tokens (or give them back when negative)."""
        if self.tokens_per_minute is None or not tokens:
            return
        key, tpm = f"{self.target}#tokens", float(self.tokens_per_minute)

        def txn(cur: Any) -> None:
            row = tables.lock_bucket(store, cur, key)
            if row is None:
                return
            bucket = charge(row, tokens, capacity=tpm, per_second=tpm / 60, now=tables.clock(store, cur))
            tables.save_bucket(store, cur, key, bucket)

        store.write(txn)


class Policies:
    """The process's resilience policies (``wflo.policies``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._limits: dict[str, SharedRateLimit] = {}
        self._retries: dict[str, RetryPolicy] = {}
        self._timeouts: dict[str, float] = {}

    def breaker(self, target: str, *, failures: int = 5, reset: float | str = "30s") -> CircuitBreaker:
        """Open the circuit of ``target`` after ``failures`` failed calls in a row; after
        ``reset``, admit exactly one probe call; close on its success."""
        target = _check_target(target)
        breaker = CircuitBreaker(target, failure_threshold=failures, reset_timeout=parse_duration(reset, "reset"),
                                 is_failure=_is_failure, on_transition=_collect)  # fmt: skip
        with self._lock:
            self._breakers[target] = breaker
        return breaker

    def rate_limit(
        self,
        target: str,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_wait: float | str = "60s",
    ) -> SharedRateLimit:
        """Limit ``target`` to so many requests and/or tokens per minute, across all processes on the store."""
        target = _check_target(target)
        check_rates("rate_limit", requests_per_minute, tokens_per_minute)
        if requests_per_minute is None and tokens_per_minute is None:
            raise UserError("rate_limit needs requests_per_minute=, tokens_per_minute= or both")
        wait = 0.0 if max_wait in (0, "0") else parse_duration(max_wait, "max_wait")
        limit = SharedRateLimit(target, requests_per_minute, tokens_per_minute, wait)
        with self._lock:
            self._limits[target] = limit
        return limit

    def retry(self, target: str, policy: RetryPolicy) -> RetryPolicy:
        """Retry failed LLM calls of ``target`` (``model:…`` or ``provider:…``) by ``policy``:
        connection errors, timeouts and 408/409/429/5xx answers, honouring ``Retry-After``.
        Each attempt is its own journaled, budgeted call. (Steps and tools take ``retry=`` where
        they are declared.) Give the SDK ``max_retries=0`` so the two do not multiply."""
        target = _check_target(target)
        if target.split(":", 1)[0] not in ("model", "provider"):
            raise UserError(
                f"policies.retry is for LLM calls (model:… or provider:…); steps and tools take retry=, got {target!r}"
            )
        if not isinstance(policy, RetryPolicy):
            raise UserError(f"policies.retry takes a wflo.RetryPolicy(...), got {policy!r}")
        with self._lock:
            self._retries[target] = policy
        return policy

    def timeout(self, target: str, seconds: float | str) -> float:
        """Bound every phase (connect, write, each read, pool) of ``target``'s LLM requests."""
        target = _check_target(target)
        if target.split(":", 1)[0] not in ("model", "provider"):
            raise UserError(
                f"policies.timeout is for LLM calls (model:… or provider:…); steps and tools take timeout=, got {target!r}"
            )
        value = parse_duration(seconds, "timeout")
        with self._lock:
            self._timeouts[target] = value
        return value

    def retry_for(self, call: Call) -> RetryPolicy | None:
        policy: RetryPolicy | None = self._first(self._retries, call)
        return policy

    def timeout_for(self, call: Call) -> float | None:
        seconds: float | None = self._first(self._timeouts, call)
        return seconds

    def _first(self, table: dict[str, Any], call: Call) -> Any:
        if not table:
            return None
        keys = _keys(call)
        with self._lock:
            # The most specific target wins: model:NAME, then provider:NAME, then the * forms.
            for target in sorted(table, key=lambda t: (t.endswith(":*"), not t.startswith("model:"))):
                if _matches(target, keys):
                    return table[target]
        return None

    def clear(self) -> None:
        """Forget every policy of this process (the shared buckets stay in the store)."""
        with self._lock:
            self._breakers.clear()
            self._limits.clear()
            self._retries.clear()
            self._timeouts.clear()

    def matching(self, call: Call) -> tuple[list[CircuitBreaker], list[SharedRateLimit]]:
        if not self._breakers and not self._limits:
            return [], []
        keys = _keys(call)
        with self._lock:
            breakers = [b for t, b in sorted(self._breakers.items()) if _matches(t, keys)]
            limits = [v for t, v in sorted(self._limits.items()) if _matches(t, keys)]
        return breakers, limits


policies = Policies()


def _collect(transition: Transition) -> None:
    pending = _pending.get()
    if pending is not None:
        pending.append(transition)


def _estimate_tokens(call: Call) -> float:
    if call.kind != "llm":
        return 0.0
    body = call.meta.get("body") or {}
    cap = 0
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(body.get(field), int):
            cap = body[field]
    return len(json.dumps(body)) / 4 + cap


def _used_tokens(call: Call) -> float | None:
    usage = call.event.get("usage")
    if not isinstance(usage, dict):
        return None
    return float((usage.get("input_tokens") or 0) + (usage.get("output_tokens") or 0))


class PolicyGuard(Guard):
    """Applies ``wflo.policies`` to a run's calls (placed after the approval guard: a call
    that waits for a person does not hold a rate-limit turn meanwhile)."""

    def __init__(self, registry: Policies) -> None:
        self.registry = registry

    def local(self, call: Call) -> bool:
        breakers, limits = self.registry.matching(call)
        return not breakers and not limits  # the rate limits and breakers live in the store

    def before(self, call: Call) -> None:
        breakers, limits = self.registry.matching(call)
        if not breakers and not limits:
            return
        tokens = _estimate_tokens(call)
        store = call.run.store
        # What was done so far is kept on the call: an async call waits for its turn on its
        # event loop (``pause`` raises there), and this is then called again to go on.
        waiting: dict[str, float] = call.meta.setdefault("_rate_waited", {})  # target -> seconds waited
        taken: set[str] = call.meta.setdefault("_rate_taken", set())
        for limit in limits:
            if limit.target in taken:
                continue
            waited = waiting.get(limit.target, 0.0)
            while (wait := limit.next_wait(store, tokens, waited)) > 0:
                waiting[limit.target] = waited = waited + wait  # counted before: a wait on the loop comes back here
                pause(call, wait)
            taken.add(limit.target)
            if waited:
                call.event.setdefault("rate_limit", []).append({"target": limit.target, "waited_s": round(waited, 3)})
        permits = []
        pending: list[Transition] = []
        token = _pending.set(pending)
        try:
            for breaker in breakers:
                permits.append((breaker, breaker.allow()))
        except BaseException:
            for breaker, permit in permits:  # admitted by one, refused by another: not a result
                breaker.report(permit, _NEUTRAL)
            raise
        finally:
            _pending.reset(token)
            self._record(call, pending)
        call.meta["_policies"] = (permits, limits, tokens)

    def after(self, call: Call, outcome: Outcome) -> None:
        state = call.meta.pop("_policies", None)
        if state is None:
            return
        permits, limits, tokens = state
        error = outcome.error
        if error is None and call.kind == "llm" and isinstance(outcome.value, dict):
            status = outcome.value.get("status")
            if isinstance(status, int) and (status == 429 or status >= 500):
                error = ProviderStatusError(status)
        pending: list[Transition] = []
        token = _pending.set(pending)
        try:
            for breaker, permit in permits:
                breaker.report(permit, error)
        finally:
            _pending.reset(token)
        self._record(call, pending)
        used = _used_tokens(call)
        if used is not None:
            for limit in limits:
                limit.adjust(call.run.store, used - tokens)

    @staticmethod
    def _record(call: Call, transitions: list[Transition]) -> None:
        if not transitions:
            return
        data = [
            {"target": t.key, "from": t.old, "to": t.new, "failures": t.failures, "retry_at": t.retry_at}
            for t in transitions
        ]
        call.event.setdefault("breaker", []).extend(data)
        call.run.append([NewEvent("breaker.transition", {"call": call.call_id, **d}) for d in data])
