"""``OrderedExecutor.submit(..., here=True)`` and ``Store.off_loop(..., here=True)``: a job that
needs no store runs on the caller's thread when its key has nothing queued or running, in the
key's order, and the awaiting task is woken without a hand-off through the loop's wake-up pipe."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from wflo import _config
from wflo.store import OrderedExecutor


def test_a_job_runs_here_only_when_its_key_is_idle() -> None:
    pool = OrderedExecutor("here", 2)
    me = threading.current_thread()
    ran: list[tuple[str, bool]] = []

    def job(tag: str) -> str:
        ran.append((tag, threading.current_thread() is me))
        return tag

    first = pool.submit("k", lambda: job("first"), here=True)
    assert first.done() and first.result() == "first"  # idle key: run here, at once
    gate = threading.Event()
    blocked = pool.submit("k", lambda: gate.wait(5))
    queued = pool.submit("k", lambda: job("queued"), here=True)  # busy key: waits its turn
    other = pool.submit("other", lambda: job("other"), here=True)  # another key is idle
    assert other.done() and not queued.done()
    gate.set()
    assert blocked.result(timeout=5) and queued.result(timeout=5) == "queued"
    assert ran == [("first", True), ("other", True), ("queued", False)]
    pool.close()


def test_jobs_submitted_while_one_runs_here_wait_for_it() -> None:
    pool = OrderedExecutor("here", 2)
    order: list[str] = []
    inner: list[Any] = []

    def outer() -> None:
        inner.append(pool.submit("k", lambda: order.append("inner")))  # the key is busy: queued
        threading.Event().wait(0.05)  # a store thread would run it now if it could
        order.append("outer")

    assert pool.submit("k", outer, here=True).done()
    inner[0].result(timeout=5)
    assert order == ["outer", "inner"]
    pool.close()


@pytest.mark.parametrize("here", [True, False])
def test_off_loop_here_wakes_the_task_without_the_wake_up_pipe(configured: str, here: bool) -> None:
    store = _config.get_store()

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        wakes = [0]
        real = loop._write_to_self  # type: ignore[attr-defined]

        def counting() -> None:  # a write to the loop's wake-up pipe (``call_soon_threadsafe``'s)
            wakes[0] += 1
            real()

        loop._write_to_self = counting  # type: ignore[attr-defined]
        try:
            # (a job taking a while: a queued one is not over before its caller awaits it)
            value = await store.off_loop(lambda: time.sleep(0.01) or 7, key="here-test", here=here)
        finally:
            del loop._write_to_self
        return value, wakes[0]

    value, wakes = asyncio.run(main())
    assert value == 7
    assert (wakes == 0) if here else (wakes >= 1)


def test_a_job_lets_its_key_go_before_its_caller_is_woken() -> None:
    """The store thread that ran a job lets its key go (or passes it to the next job) before
    the job's future is done or its ``off_loop`` caller woken: code woken by the end of a job
    finds the key free, and its next job that needs no store runs here, not queued behind a
    job that is over (before, it queued unless the caller had been marked woken, ``told``)."""
    pool = OrderedExecutor("here", 2)
    where: list[tuple[bool, bool]] = []
    first = pool.submit("k", lambda: "first")

    def on_end(future: Any) -> None:  # runs on the store thread once the job ended
        me = threading.current_thread()
        second = pool.submit("k", lambda: threading.current_thread() is me, here=True)
        where.append((second.done(), second.result(timeout=5)))

    first.add_done_callback(on_end)
    assert first.result(timeout=5) == "first"
    deadline = time.monotonic() + 5
    while not where and time.monotonic() < deadline:
        time.sleep(0.001)
    assert where == [(True, True)]
    assert pool.submit("k", lambda: "after").result(timeout=5) == "after"  # the key is not stuck
    pool.close()


def test_off_loop_wakes_its_caller_in_one_turn_of_the_loop(configured: str) -> None:
    """A job run here wakes its caller one turn of the loop later: the callback that hands
    its outcome over resumes the task (a ``LoopWaiter``), where a future's caller (as
    ``asyncio.wrap_future``'s) resumes a turn after that (two before, three with
    ``asyncio.shield`` before that)."""
    store = _config.get_store()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        turns = [0]
        ticking = [True]

        def tick() -> None:
            if ticking[0]:
                turns[0] += 1
                loop.call_soon(tick)

        loop.call_soon(tick)
        await asyncio.sleep(0)  # the ticker is running: one turn each
        before = turns[0]
        await store.off_loop(lambda: 7, key="turns-test", here=True)
        ticking[0] = False
        return turns[0] - before

    assert asyncio.run(main()) == 1


@pytest.mark.parametrize("times", [1, 2])
def test_a_cancelled_caller_gets_the_jobs_end_and_then_its_cancellation(configured: str, times: int) -> None:
    """Cancelled (once, or again while it waits) as its job runs on a store thread: the job runs
    to its end, the caller gets its value, and the cancellation comes at the caller's next await."""
    store = _config.get_store()
    ended = threading.Event()

    def job() -> int:
        time.sleep(0.1)
        ended.set()
        return 7

    got: list[int] = []

    async def caller() -> None:
        got.append(await store.off_loop(job, key="cancel-test"))
        await asyncio.sleep(1)  # the cancellation lands here
        got.append(-1)

    async def main() -> None:
        task = asyncio.create_task(caller())
        for _ in range(times):
            await asyncio.sleep(0.02)
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended.is_set()

    asyncio.run(main())
    assert got == [7]


def test_a_store_thread_lets_the_lock_go_before_it_wakes_the_loop(configured: str) -> None:
    """The wake-up's system call (a write to the loop's wake-up pipe, which lets the GIL go)
    is the store thread's last work for the job, made once the executor's lock is let go, with
    the key let go already: the woken loop's next step finds the lock free (before, it was made
    under the lock, and a step's start often waited for the thread to let it go, ~24 µs)."""
    store = _config.get_store()

    async def main() -> list[tuple[bool, bool]]:
        loop = asyncio.get_running_loop()
        executor = store._offloader()
        seen: list[tuple[bool, bool]] = []
        real = loop._write_to_self  # type: ignore[attr-defined]

        def write() -> None:
            if threading.current_thread().name.startswith("wflo-store-"):
                seen.append((executor._lock.locked(), "lock-test" in executor._running))
            real()

        loop._write_to_self = write  # type: ignore[attr-defined]
        try:
            for _ in range(3):
                assert await store.off_loop(lambda: time.sleep(0.01) or 7, key="lock-test") == 7
        finally:
            del loop._write_to_self
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 3
    assert seen == [(False, False)] * 3


def test_a_loop_without_the_private_wake_halves_is_woken_the_public_way(configured: str) -> None:
    """The store thread wakes a CPython loop through its two private halves (queue, then the
    wake-up pipe); a loop whose ``_call_soon`` differs (another loop, a later Python) is woken
    through ``call_soon_threadsafe``, not left waiting for ever."""
    from wflo.store import _conn

    store = _config.get_store()
    public: list[int] = []

    class Other(asyncio.SelectorEventLoop):
        def _call_soon(self, callback: Any, args: Any, context: Any, *, extra: Any = None) -> Any:  # type: ignore[override]
            return super()._call_soon(callback, args, context)

        def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not threading.main_thread():
                public.append(1)
            return super().call_soon_threadsafe(*args, **kwargs)

    async def main() -> list[int]:
        return [await store.off_loop(lambda i=i: i, key=f"other-{i}") for i in range(3)]

    loop = Other()
    try:
        assert loop.run_until_complete(asyncio.wait_for(main(), 10)) == [0, 1, 2]
    finally:
        loop.close()
    assert not _conn._splits_wake(Other) and _conn._splits_wake(asyncio.SelectorEventLoop)
    assert len(public) == 3


def test_a_job_queued_while_the_only_thread_takes_its_own_gets_a_thread() -> None:
    # A thread counted idle that had just taken a job (the one that then blocks) made the next
    # key's dispatch start no thread: that job waited for the blocked one, however long. Rare
    # per try (about 4% here), so tried many times; each try takes a few milliseconds.
    stalls = 0
    for _ in range(300):
        pool = OrderedExecutor("race", 4)
        gate = threading.Event()
        blocked = pool.submit("a", lambda gate=gate: gate.wait(5))
        other = pool.submit("b", lambda: "b ran")
        try:
            other.result(timeout=1)
        except TimeoutError:
            stalls += 1
        gate.set()
        blocked.result(timeout=5)
        pool.close()
    assert stalls == 0, f"{stalls} of 300 jobs of another key waited behind a blocked one"
