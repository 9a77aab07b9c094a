"""Timeouts: async calls are cancelled; sync calls stop being waited for."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from wflo._errors import UserError
from wflo.guards import Timeout, timeout

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_sync_call_returns_value_and_raises_its_errors() -> None:
    assert timeout(5).call(lambda a, b=0: a + b, 1, b=2) == 3
    with pytest.raises(KeyError):
        timeout("5s").call(lambda: {}["missing"])


def test_sync_call_times_out_and_the_function_runs_on() -> None:
    finished = threading.Event()

    def slow() -> str:
        time.sleep(0.3)
        finished.set()
        return "late"

    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"slow timed out after 0\.05s"):
        timeout(0.05).call(slow)
    assert time.monotonic() - start < 0.25
    assert finished.wait(2)  # documented: it could not be stopped, only abandoned


def test_sync_call_sees_the_callers_context() -> None:
    VAR.set("run-7")
    assert timeout(1).call(VAR.get) == "run-7"


def test_no_limit_calls_inline() -> None:
    assert timeout(None).call(threading.get_ident) == threading.get_ident()


def test_async_call_is_cancelled_at_the_limit() -> None:
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    async def quick(x: int) -> int:
        return x * 2

    async def main() -> None:
        assert await timeout(1).acall(quick, 21) == 42
        with pytest.raises(TimeoutError, match=r"timed out after 0\.05s"):
            await timeout(0.05).acall(slow)

    asyncio.run(main())
    assert cancelled == [1]


def test_async_with_and_decorators() -> None:
    @timeout("50ms")
    async def slow() -> None:
        await asyncio.sleep(5)

    @timeout(1)
    def add(a: int, b: int) -> int:
        return a + b

    async def main() -> None:
        async with timeout(1):
            await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            async with timeout(0.05):
                await asyncio.sleep(5)
        with pytest.raises(TimeoutError):
            await slow()
        assert await timeout(1).acall(add, 1, 2) == 3  # a sync function from async code: in a thread

    asyncio.run(main())
    assert add(2, 3) == 5 and add.__name__ == "add"


def test_one_async_with_at_a_time() -> None:
    t = Timeout(1)

    async def main() -> None:
        async with t:
            with pytest.raises(RuntimeError):
                async with t:
                    pass

    asyncio.run(main())


@pytest.mark.parametrize("bad", [0, -1, "soon", True])
def test_bad_timeouts_are_user_errors(bad: object) -> None:
    with pytest.raises(UserError):
        timeout(bad)  # type: ignore[arg-type]
