"""Circuit breaker: the state machine, and exactly one half-open probe under concurrency."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from wflo._errors import CircuitOpenError, UserError
from wflo.guards import CircuitBreaker, Transition


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def boom() -> None:
    raise ConnectionError("down")


def ok() -> str:
    return "ok"


def make(clock: Clock, log: list[Transition] | None = None, **kw: Any) -> CircuitBreaker:
    return CircuitBreaker(
        "openai",
        failure_threshold=3,
        reset_timeout=30,
        clock=clock,
        on_transition=(log.append if log is not None else None),
        **kw,
    )


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        with pytest.raises(ConnectionError):
            breaker.call(boom)


def test_opens_after_n_consecutive_failures_and_refuses_without_calling() -> None:
    clock, log = Clock(), []
    breaker = make(clock, log)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    assert breaker.call(ok) == "ok" and breaker.failures == 0  # a success resets the count
    trip(breaker)
    assert breaker.state == "open" and breaker.retry_at == 1030.0
    ran: list[int] = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: ran.append(1))
    assert ran == [] and info.value.key == "openai" and info.value.retry_at == 1030.0
    assert [(t.old, t.new, t.failures, t.retry_at) for t in log] == [("closed", "open", 3, 1030.0)]


def test_half_open_probe_success_closes() -> None:
    clock, log = Clock(), []
    breaker = make(clock, log)
    trip(breaker)
    clock.t += 29.9
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    clock.t += 0.1
    assert breaker.call(ok) == "ok" and breaker.state == "closed"
    assert [(t.old, t.new) for t in log] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert log[1].at == 1030.0


def test_half_open_probe_failure_reopens_for_another_timeout() -> None:
    clock, log = Clock(), []
    breaker = make(clock, log)
    trip(breaker)
    clock.t += 30
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    assert breaker.state == "open" and breaker.retry_at == clock.t + 30
    assert [(t.old, t.new) for t in log][-1] == ("half_open", "open")


def test_errors_that_say_nothing_about_the_dependency_are_neutral() -> None:
    clock = Clock()
    breaker = make(clock)
    for _ in range(10):
        with pytest.raises(ValueError):
            breaker.call(lambda: (_ for _ in ()).throw(ValueError("bad input")))
    assert breaker.state == "closed" and breaker.failures == 0
    trip(breaker)
    clock.t += 30
    with pytest.raises(ValueError):  # a neutral probe: still half-open, the next caller probes
        breaker.call(lambda: (_ for _ in ()).throw(ValueError("bad input")))
    assert breaker.state == "half_open"
    assert breaker.call(ok) == "ok" and breaker.state == "closed"


def test_a_result_from_before_the_last_transition_changes_nothing() -> None:
    clock = Clock()
    breaker = make(clock)
    slow = breaker.allow()  # admitted while closed; finishes much later
    trip(breaker)
    breaker.report(slow)  # its success must not close the open circuit
    assert breaker.state == "open"


def test_custom_failure_rule_and_a_failing_callback(caplog: pytest.LogCaptureFixture) -> None:
    def bad_sink(t: Transition) -> None:
        raise RuntimeError("event store down")

    breaker = CircuitBreaker(
        "tool:x", failure_threshold=1, is_failure=lambda e: isinstance(e, KeyError), on_transition=bad_sink
    )
    with pytest.raises(ValueError):
        breaker.call(lambda: (_ for _ in ()).throw(ValueError()))
    assert breaker.state == "closed"
    with caplog.at_level(logging.ERROR, logger="wflo"), pytest.raises(KeyError):
        breaker.call(lambda: {}["k"])
    assert breaker.state == "open" and "on_transition failed" in caplog.text


def test_half_open_admits_exactly_one_probe_among_50_threads() -> None:
    clock = Clock()
    breaker = make(clock)
    trip(breaker)
    clock.t += 30
    barrier = threading.Barrier(50)
    release = threading.Event()
    probes: list[int] = []
    refused: list[int] = []

    def probe() -> str:
        probes.append(1)
        release.wait(5)  # hold the probe open while the others ask
        return "ok"

    def worker() -> None:
        barrier.wait()
        try:
            breaker.call(probe)
        except CircuitOpenError:
            refused.append(1)
            if len(refused) == 49:
                release.set()

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(probes) == 1 and len(refused) == 49 and breaker.state == "closed"


def test_half_open_admits_exactly_one_probe_among_50_tasks() -> None:
    clock = Clock()
    breaker = make(clock)
    trip(breaker)
    clock.t += 30
    probes: list[int] = []

    async def probe() -> str:
        probes.append(1)
        await asyncio.sleep(0.05)  # the others ask while it is in flight
        return "ok"

    async def worker() -> str:
        await asyncio.sleep(0)
        try:
            return await breaker.acall(probe)
        except CircuitOpenError:
            return "refused"

    async def main() -> list[str]:
        return await asyncio.gather(*(worker() for _ in range(50)))

    results = asyncio.run(main())
    assert results.count("ok") == 1 and results.count("refused") == 49 and len(probes) == 1
    assert breaker.state == "closed"


def test_a_cancelled_probe_lets_the_next_caller_probe() -> None:
    clock = Clock()
    breaker = make(clock)
    trip(breaker)
    clock.t += 30

    async def hang() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(breaker.acall(hang))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert breaker.state == "half_open" and breaker.call(ok) == "ok" and breaker.state == "closed"


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"failure_threshold": True}, {"reset_timeout": -1}])
def test_bad_breakers_are_user_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UserError):
        CircuitBreaker("k", **kwargs)
