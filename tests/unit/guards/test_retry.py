"""Retry: which errors are retried, how long it waits, and Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
import requests

from wflo._errors import (
    ApprovalRejected,
    BudgetExceededError,
    CircuitOpenError,
    LoopDetectedError,
    RateLimitedError,
    RunCancelled,
    RunStopped,
    UserError,
)
from wflo.guards import RetryPolicy, is_retryable, retry_after

REQ = httpx.Request("POST", "https://api.example/v1/chat")


def resp(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, request=REQ, headers=headers)


class Status(Exception):
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class WithResponse(Exception):
    def __init__(self, status: int) -> None:
        self.response = type("R", (), {"status_code": status, "headers": {}})()


def _requests_http_error(status: int) -> requests.HTTPError:
    r = requests.Response()
    r.status_code = status
    return requests.HTTPError(response=r)


CASES: list[tuple[str, BaseException, bool]] = [
    # never: wflo's refusals and control-flow signals
    ("budget", BudgetExceededError(scope="run", limit=Decimal(1), spent=0, reserved=0, requested=1), False),
    ("loop", LoopDetectedError(detector="max_repeats", evidence={}, run_id="r"), False),
    ("approval", ApprovalRejected(approval_id="a", reason="no", decided_by="bob"), False),
    ("user", UserError("bad"), False),
    ("cancelled", RunCancelled(run_id="r"), False),
    ("stopped", RunStopped(run_id="r", detector="x"), False),
    ("keyboard", KeyboardInterrupt(), False),
    ("asyncio-cancel", asyncio.CancelledError(), False),
    # wflo's "later"
    ("rate-limited", RateLimitedError(key="k", limit="1/s", retry_after=1), True),
    ("circuit-open", CircuitOpenError(key="k", retry_at=0.0), True),
    # HTTP statuses, by duck typing
    *[(f"status-{s}", Status(s), s in (408, 409, 429) or s >= 500) for s in (400, 401, 403, 404, 408, 409, 422, 429)],
    *[(f"status-{s}", Status(s), True) for s in (500, 502, 503, 504, 529)],
    ("response-503", WithResponse(503), True),
    ("response-404", WithResponse(404), False),
    ("openai-429", openai.RateLimitError("slow", response=resp(429), body=None), True),
    ("openai-400", openai.BadRequestError("bad", response=resp(400), body=None), False),
    ("openai-401", openai.AuthenticationError("key", response=resp(401), body=None), False),
    ("openai-500", openai.InternalServerError("oops", response=resp(500), body=None), True),
    ("openai-connection", openai.APIConnectionError(request=REQ), True),
    ("openai-timeout", openai.APITimeoutError(request=REQ), True),
    ("anthropic-529", anthropic.InternalServerError("overloaded", response=resp(529), body=None), True),
    ("anthropic-404", anthropic.NotFoundError("model", response=resp(404), body=None), False),
    ("anthropic-connection", anthropic.APIConnectionError(request=REQ), True),
    ("httpx-503", httpx.HTTPStatusError("x", request=REQ, response=resp(503)), True),
    ("httpx-404", httpx.HTTPStatusError("x", request=REQ, response=resp(404)), False),
    ("httpx-connect", httpx.ConnectError("refused"), True),
    ("httpx-read-timeout", httpx.ReadTimeout("slow"), True),
    ("requests-connection", requests.ConnectionError(), True),
    ("requests-timeout", requests.Timeout(), True),
    ("requests-500", _requests_http_error(500), True),
    ("requests-403", _requests_http_error(403), False),
    # builtins
    ("timeout", TimeoutError(), True),
    ("conn-reset", ConnectionResetError(), True),
    ("file-not-found", FileNotFoundError(), False),
    ("value", ValueError("bug"), False),
    ("key", KeyError("bug"), False),
]


@pytest.mark.parametrize(("error", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classification(error: BaseException, expected: bool) -> None:
    assert is_retryable(error) is expected
    assert RetryPolicy().should_retry(error) is expected


def test_retry_on_overrides_but_never_past_the_refusals() -> None:
    only_value = RetryPolicy(retry_on=(ValueError,))
    assert only_value.should_retry(ValueError()) and not only_value.should_retry(TimeoutError())
    everything = RetryPolicy(retry_on=(Exception,))
    assert not everything.should_retry(LoopDetectedError(detector="x", evidence={}, run_id="r"))
    fn = RetryPolicy(retry_on=lambda e: True if isinstance(e, KeyError) else None)
    assert fn.should_retry(KeyError()) and fn.should_retry(TimeoutError()) and not fn.should_retry(ValueError())


# ---------------------------------------------------------------- Retry-After
def test_retry_after_in_seconds_and_ms() -> None:
    assert retry_after(openai.RateLimitError("x", response=resp(429, **{"retry-after": "7"}), body=None)) == 7.0
    assert retry_after(httpx.HTTPStatusError("x", request=REQ, response=resp(503, **{"Retry-After": "2.5"}))) == 2.5
    assert retry_after(openai.RateLimitError("x", response=resp(429, **{"retry-after-ms": "1500"}), body=None)) == 1.5
    assert retry_after(Status(429)) is None
    assert retry_after(httpx.HTTPStatusError("x", request=REQ, response=resp(503, **{"retry-after": "soon"}))) is None


def test_retry_after_as_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    err = httpx.HTTPStatusError("x", request=REQ, response=resp(503, **{"retry-after": header}))
    assert retry_after(err, now=lambda: now) == 30.0
    past = email.utils.formatdate(now - 30, usegmt=True)
    err = httpx.HTTPStatusError("x", request=REQ, response=resp(503, **{"retry-after": past}))
    assert retry_after(err, now=lambda: now) == 0.0


def test_retry_after_from_wflo_errors_and_plain_headers() -> None:
    assert retry_after(RateLimitedError(key="k", limit="1/s", retry_after=4)) == 4.0
    assert retry_after(CircuitOpenError(key="k", retry_at=110.0), now=lambda: 100.0) == 10.0

    class Plain(Exception):
        headers = {"RETRY-AFTER": "3"}  # noqa: RUF012  a test double

    assert retry_after(Plain()) == 3.0


def test_retry_after_is_the_least_delay() -> None:
    policy = RetryPolicy(attempts=3, backoff=0.5, random=lambda: 0.0)
    err = openai.RateLimitError("x", response=resp(429, **{"retry-after": "12"}), body=None)
    assert policy.next_delay(1, err) == 12.0
    assert policy.next_delay(1, Status(429)) == 0.0  # no header: the jittered backoff (0 here)


def test_retry_after_longer_than_max_backoff_ends_the_retries() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=5, max_backoff=30, sleep=sleeps.append)
    err = openai.RateLimitError("x", response=resp(429, **{"retry-after": "3600"}), body=None)
    calls = []

    def fn() -> None:
        calls.append(1)
        raise err

    with pytest.raises(openai.RateLimitError):
        policy.call(fn)
    assert calls == [1] and sleeps == []


# ---------------------------------------------------------------- backoff
def test_backoff_bounds_with_full_jitter() -> None:
    import random

    rng = random.Random(7)
    policy = RetryPolicy(attempts=20, backoff=0.5, max_backoff=30, random=rng.random)
    for attempt in range(1, 20):
        cap = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert policy.backoff_cap(attempt) == cap
        delays = [policy.next_delay(attempt, TimeoutError()) for _ in range(200)]
        assert all(d is not None and 0 <= d <= cap for d in delays)
        assert max(d for d in delays if d is not None) > cap * 0.9  # it does use the whole range
    assert policy.next_delay(20, TimeoutError()) is None  # attempts exhausted


def test_backoff_without_jitter_is_exact() -> None:
    policy = RetryPolicy(attempts=10, backoff=1, max_backoff=10, jitter=False)
    assert [policy.next_delay(n, TimeoutError()) for n in range(1, 10)] == [1, 2, 4, 8, 10, 10, 10, 10, 10]


# ---------------------------------------------------------------- call / acall
class Flaky:
    def __init__(self, failures: list[BaseException], value: Any = "ok") -> None:
        self.failures = list(failures)
        self.value = value
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.args = (args, kwargs)
        if self.failures:
            raise self.failures.pop(0)
        return self.value


def test_call_retries_then_succeeds_and_reports_each_retry() -> None:
    sleeps: list[float] = []
    seen: list[tuple[int, str, float]] = []
    policy = RetryPolicy(attempts=3, backoff=1, jitter=False, sleep=sleeps.append)
    fn = Flaky([TimeoutError("t1"), Status(503)])
    assert policy.call(fn, 1, k=2, on_retry=lambda a, e, d: seen.append((a, type(e).__name__, d))) == "ok"
    assert fn.calls == 3 and fn.args == ((1,), {"k": 2})
    assert seen == [(1, "TimeoutError", 1.0), (2, "Status", 2.0)] and sleeps == [1.0, 2.0]


def test_call_gives_up_after_attempts() -> None:
    policy = RetryPolicy(attempts=3, sleep=lambda s: None)
    fn = Flaky([TimeoutError(str(i)) for i in range(10)])
    with pytest.raises(TimeoutError, match="2"):
        policy.call(fn)
    assert fn.calls == 3


def test_non_retryable_errors_are_raised_at_once() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=5, sleep=sleeps.append)
    for error in (
        ValueError("bug"),
        Status(400),
        BudgetExceededError(scope="run", limit=1, spent=1, reserved=0, requested=1),
    ):
        fn = Flaky([error])
        with pytest.raises(type(error)):
            policy.call(fn)
        assert fn.calls == 1
    fn = Flaky([RunCancelled(run_id="r")])
    with pytest.raises(RunCancelled):
        policy.call(fn)
    assert sleeps == []


def test_on_retry_can_stop_the_retries() -> None:
    def veto(attempt: int, error: BaseException, delay: float) -> None:
        raise RuntimeError("journal down")

    with pytest.raises(RuntimeError, match="journal down"):
        RetryPolicy(sleep=lambda s: None).call(Flaky([TimeoutError()]), on_retry=veto)


def test_acall_retries_with_the_async_sleep() -> None:
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    policy = RetryPolicy(attempts=4, backoff=0.25, jitter=False, asleep=fake_sleep)
    flaky = Flaky([ConnectionResetError(), httpx.ReadTimeout("x"), Status(429)], value=42)

    async def fn(x: int) -> int:
        return int(flaky()) + x

    retries: list[int] = []
    assert asyncio.run(policy.acall(fn, 1, on_retry=lambda a, e, d: retries.append(a))) == 43
    assert sleeps == [0.25, 0.5, 1.0] and retries == [1, 2, 3]


def test_decorator_for_sync_and_async() -> None:
    policy = RetryPolicy(attempts=2, sleep=lambda s: None, asleep=lambda s: asyncio.sleep(0))
    flaky = Flaky([TimeoutError()])

    @policy
    def f() -> str:
        return str(flaky())

    assert f() == "ok" and flaky.calls == 2 and f.__name__ == "f"
    flaky2 = Flaky([TimeoutError()])

    @policy
    async def g() -> str:
        return str(flaky2())

    assert asyncio.run(g()) == "ok" and flaky2.calls == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"attempts": 0}, {"attempts": 1.5}, {"backoff": -1}, {"max_backoff": "x"}, {"backoff": 5, "max_backoff": 1}],
)
def test_bad_policies_are_user_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UserError):
        RetryPolicy(**kwargs)


# ----------------------------------------------------------- policies built with nonsense
@pytest.mark.parametrize(
    ("options", "says"),
    [
        # NaN passed "< 0" and "max_backoff < backoff": a NaN delay reached sleep().
        ({"backoff": float("nan")}, r"RetryPolicy\(backoff=\.\.\.\) must be a finite number of seconds >= 0, got nan"),
        ({"max_backoff": float("nan")}, r"RetryPolicy\(max_backoff=\.\.\.\) must be a finite"),
        ({"backoff": float("inf"), "max_backoff": float("inf")}, r"RetryPolicy\(backoff=\.\.\.\) must be a finite"),
        ({"retry_on": 5}, r"retry_on=\.\.\.\) takes a tuple of exception classes or a function of the error, got 5"),
        ({"retry_on": (ValueError, "TimeoutError")}, r"retry_on=\.\.\.\) takes exception classes"),
    ],
)
def test_nonsense_retry_policies_are_refused(options: dict[str, Any], says: str) -> None:
    with pytest.raises(UserError, match=says):
        RetryPolicy(**options)


def test_retry_on_one_exception_class_means_that_class() -> None:
    # A class is callable: retry_on=ValueError was called as a predicate, ValueError(error),
    # whose truthy instance retried every error, a KeyError too.
    policy = RetryPolicy(retry_on=ValueError)
    assert policy.retry_on == (ValueError,)
    assert policy.should_retry(ValueError("x"))
    assert not policy.should_retry(KeyError("x"))
