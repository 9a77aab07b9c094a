"""Async runs never block their event loop on the store (both stores).

A probe coroutine ticks every millisecond and records the longest gap between its ticks while
an async workflow runs 50 steps and a guarded LLM call (the real ``openai`` SDK against
``wflo.testing``'s server) on a store made slow by another connection holding its write lock.
Store work runs on the store's threads (``Store.off_loop``): the run waits for the lock, the
loop does not. Also: a run's writes keep their order, and ``aresult`` wakes promptly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from decimal import Decimal
from typing import Any

import openai
import pytest

import wflo
from wflo import _config
from wflo.store import Head, NewEvent, OrderedExecutor
from wflo.testing import LLMServer, Reply

STEPS = 50
LOCK_SECONDS = 0.3


class Probe:
    """Ticks every millisecond on the loop; ``max_gap`` is the longest wait between two ticks."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task


@contextmanager
def _hold_once(url: str) -> Iterator[None]:
    """One stretch of another connection holding the store's write lock (runs' rows on PG)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute("BEGIN")
            pg.execute("LOCK TABLE runs IN EXCLUSIVE MODE")  # appends and starts wait; reads do not
            yield
            pg.execute("COMMIT")


@contextmanager
def slow_store(url: str, times: int = 3) -> Iterator[list[float]]:
    """Another connection takes the write lock for ``LOCK_SECONDS``, ``times`` times."""
    stop = threading.Event()
    held: list[float] = []

    def hold() -> None:
        for _ in range(times):
            if stop.is_set():
                return
            with _hold_once(url):
                t0 = time.perf_counter()
                stop.wait(LOCK_SECONDS)
                held.append(time.perf_counter() - t0)
            time.sleep(0.1)

    thread = threading.Thread(target=hold, name="test-locker")
    thread.start()
    try:
        time.sleep(0.05)  # the first lock is taken before the run starts
        yield held
    finally:
        stop.set()
        thread.join()


def test_loop_keeps_ticking_while_the_store_is_locked(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("warm", input_tokens=5, output_tokens=1), Reply("the answer", input_tokens=20, output_tokens=2))

    clients: list[openai.AsyncOpenAI] = []

    @wflo.step
    async def add(i: int) -> int:
        await asyncio.sleep(0)
        return i

    @wflo.workflow(name="async-slow-store", budget=wflo.Budget(usd="1"))
    async def flow() -> tuple[int, str]:
        total = 0
        for i in range(STEPS):
            total += await add(i)
        reply = await clients[0].chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        return total, reply.choices[0].message.content or ""

    async def main() -> tuple[tuple[int, str], float, Probe, list[float]]:
        # Not the store's doing, and done once per process, so done before the probe: the SDK
        # imports and builds its models on first use, a client loads its TLS context when made,
        # and the price table's import (a large module) holds the GIL while it loads.
        wflo.cost.prices.lookup("gpt-4o-mini", "openai")
        client = openai.AsyncOpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        clients.append(client)
        with slow_store(configured) as held:  # the first lock is held from before the run starts
            probe = Probe()
            probe.start()
            t0 = time.perf_counter()
            result = await flow.options(id="slow-1").arun()
            elapsed = time.perf_counter() - t0
            await probe.stop()
        await client.close()
        return result, elapsed, probe, held

    _config.get_store()  # opened (and migrated) before another connection takes the lock
    result, elapsed, probe, held = asyncio.run(main())
    assert result == (sum(range(STEPS)), "the answer")
    assert held and elapsed >= LOCK_SECONDS * 0.9, "the run never waited for the lock: the test tests nothing"
    # The run waited for the lock (a commit at a time); the loop did not.
    assert probe.max_gap < LOCK_SECONDS / 3, f"the event loop stalled {probe.max_gap * 1000:.0f} ms"
    assert probe.ticks > 50

    events = _config.get_store().events("slow-1")
    calls = [e.data["call"] for e in events if e.type == "call.completed"]
    assert calls == [str(i) for i in range(1, STEPS + 2)], "the run's writes left their order"
    (llm_event,) = [e.data for e in events if e.type == "call.completed" and e.data["kind"] == "llm"]
    assert Decimal(llm_event["cost_usd"]) > 0  # reserved and settled through the budget guard
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("ask", ["aapproval", "approval"])
def test_loop_keeps_ticking_while_an_async_run_asks_for_an_approval(
    configured: str, ask: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``await wflo.aapproval(...)`` finds and files its request, and records its decision,
    on the store's threads: with the store locked the run waits, the loop does not. The sync
    ``wflo.approval(...)`` called from the same async workflow blocks the loop for the lock,
    which shows the probe can see it."""
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:owner")
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=0.05)

    held: list[float] = []
    asking = threading.Event()

    def hold(locked: threading.Event) -> None:
        # Held for LOCK_SECONDS from the moment the run asks, not from the moment it is taken:
        # under load the run's hop back from ``locked.wait`` alone outlasted a lock held for a
        # fixed time, and the sync call then found the store free.
        with _hold_once(configured):
            locked.set()
            asking.wait(5)
            t0 = time.perf_counter()
            time.sleep(LOCK_SECONDS)
            held.append(time.perf_counter() - t0)

    @wflo.workflow(name=f"async-slow-{ask}")
    async def flow() -> bool:
        if not held:  # the first execution asks while another connection holds the lock
            locked = threading.Event()
            threading.Thread(target=hold, args=(locked,), name="test-locker").start()
            await asyncio.to_thread(locked.wait, 5)
            asking.set()
        kwargs: dict[str, Any] = {"approvers": ["user:bob"], "timeout": 0.2, "on_timeout": "approve"}
        if ask == "aapproval":
            decision = await wflo.aapproval("go?", **kwargs)
        else:
            decision = wflo.approval("go?", **kwargs)
        return decision.approved

    async def main() -> tuple[bool, float, Probe]:
        probe = Probe()
        probe.start()
        t0 = time.perf_counter()
        result = await flow.options(id=f"slow-{ask}").arun()
        elapsed = time.perf_counter() - t0
        await probe.stop()
        return result, elapsed, probe

    _config.get_store()  # opened (and migrated) before another connection takes the lock
    result, elapsed, probe = asyncio.run(main())
    assert result is True
    assert held and elapsed >= LOCK_SECONDS * 0.9, "the run never waited for the lock: the test tests nothing"
    (req,) = wflo.approvals.list(run_id=f"slow-{ask}", status=None)
    assert req.status == "approved" and req.decided_by == "policy:timeout"
    if ask == "aapproval":
        assert probe.max_gap < LOCK_SECONDS / 3, f"the event loop stalled {probe.max_gap * 1000:.0f} ms"
        assert probe.ticks > 50
    else:
        assert probe.max_gap >= LOCK_SECONDS / 3, "the sync call did not block the loop: the probe sees nothing"


def test_async_runs_waiting_for_approvals_hold_no_thread(configured: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``arun`` waits for a decision on the change feed, on the loop: four runs waiting do not
    take the two threads of the loop's default executor, which the decider then uses."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("WFLO_PRINCIPAL", "user:owner")
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=5.0)

    @wflo.workflow(name="async-wait-threadless")
    async def flow(i: int) -> int:
        decision = await wflo.aapproval(f"go {i}?", approvers=["user:bob"])
        return int(decision.approved) + i

    def approve_all() -> int:
        deadline = time.monotonic() + 10
        while len(pending := wflo.approvals.list()) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        for req in pending:
            wflo.approvals.approve(req.id, principal="user:bob")
        return len(pending)

    async def main() -> list[int]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
        runs = asyncio.gather(*(flow.options(id=f"threadless-{i}").arun(i) for i in range(4)))
        await asyncio.sleep(0.3)  # all four are waiting now
        assert await asyncio.wait_for(asyncio.to_thread(approve_all), 10) == 4, "a waiting run holds a thread"
        return list(await asyncio.wait_for(runs, 10))

    _config.get_store()
    assert asyncio.run(main()) == [1, 2, 3, 4]


def test_concurrent_tasks_of_a_run_are_numbered_in_the_order_they_ran(configured: str) -> None:
    """``asyncio.gather`` of steps: ids follow the order the tasks reached their calls, so a
    replay (which reaches them in the same order) finds each one at its place."""
    seen: list[int] = []

    @wflo.step
    async def echo(i: int) -> int:
        seen.append(i)
        await asyncio.sleep(0.001 * (5 - i % 5))
        return i

    @wflo.workflow(name="async-gather-order")
    async def flow() -> list[int]:
        return list(await asyncio.gather(*(echo(i) for i in range(20))))

    assert asyncio.run(flow.options(id="gather-1").arun()) == list(range(20))
    events = _config.get_store().events("gather-1")
    by_call = {e.data["call"]: e.data for e in events if e.type == "call.completed"}
    assert sorted(by_call, key=int) == [str(i) for i in range(1, 21)]
    for call_id, data in by_call.items():
        assert data["input"] == {"args": [int(call_id) - 1], "kwargs": {}}, "a call took another task's place"


@pytest.mark.parametrize("trials", [5])
def test_aresult_wakes_promptly(configured: str, trials: int) -> None:
    """``aresult`` waits on the loop (no thread) and wakes soon after the run's final commit:
    within 50 ms on SQLite, 10 ms on PostgreSQL (median of a few)."""

    @wflo.workflow(name="async-wake")
    def flow(i: int) -> int:
        return i

    store = _config.get_store()
    latencies = []
    for i in range(trials):
        handle = flow.options(id=f"wake-{i}").start(i)

        async def wait_for_it(handle: wflo.RunHandle = handle) -> float:
            run_id = handle.id
            waiting = asyncio.create_task(handle.aresult(timeout=10))
            await asyncio.sleep(0.2)  # it is waiting on the change feed now
            claimed = await asyncio.to_thread(store.claim, run_id, "elsewhere", 5.0)
            head = Head(claimed.last_seq, claimed.last_hash, claimed.cancel_requested)

            def finish() -> float:
                store.append(
                    run_id, head, [NewEvent("run.completed", {"output": 7})], owner="elsewhere",
                    status="succeeded", output=7, finish=True,
                )  # fmt: skip
                return time.perf_counter()

            committed = await asyncio.to_thread(finish)
            assert await waiting == 7
            return time.perf_counter() - committed

        latencies.append(asyncio.run(wait_for_it()))
    latencies.sort()
    median = latencies[len(latencies) // 2]
    bound = 0.05 if configured.startswith("sqlite") else 0.01
    assert median < bound, f"aresult woke after {median * 1000:.1f} ms (all: {[round(x * 1000, 1) for x in latencies]})"


def test_ordered_executor_keeps_a_keys_order_and_runs_keys_side_by_side() -> None:
    pool = OrderedExecutor("test", 4)
    done: dict[str, list[int]] = {"a": [], "b": []}
    gate = threading.Event()

    def job(key: str, i: int) -> int:
        if key == "a" and i == 0:
            gate.wait(5)  # key a's first job blocks; its later jobs must wait behind it
        time.sleep(0.001 * (i % 3))
        done[key].append(i)
        return i

    futures = [pool.submit(k, lambda k=k, i=i: job(k, i)) for i in range(30) for k in ("a", "b")]
    # b runs on other threads while a's first job is stuck
    deadline = time.monotonic() + 5
    while len(done["b"]) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done["b"] == list(range(30)) and done["a"] == []
    gate.set()
    assert [f.result(timeout=5) for f in futures[::2]] == list(range(30))
    assert done["a"] == list(range(30))
    failing = pool.submit("a", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=5)
    assert pool.submit("a", lambda: "after").result(timeout=5) == "after"  # the key is not stuck
    pool.close()


def test_a_cancelled_task_lets_a_calls_store_work_finish(configured: str) -> None:
    """Cancelling the task while its call's guards run on the store's thread does not cut them
    off: ``before`` finishes, the call is not run, ``after`` settles it, then the task is cancelled."""
    from wflo.engine import _executor
    from wflo.ext import Guard

    seen: list[str] = []
    entered = threading.Event()

    class Slow(Guard):
        def before(self, call: Any) -> None:
            if call.kind == "step":
                entered.set()
                time.sleep(0.2)  # on the store's thread: the loop cancels the task meanwhile
                seen.append("before")

        def after(self, call: Any, outcome: Any) -> None:
            if call.kind == "step":
                seen.append(f"after {type(outcome.error).__name__}")

    def factory(wf: Any, record: Any) -> list[Any]:
        return [Slow()] if wf.name == "async-cancel" else []

    ran: list[int] = []

    @wflo.step
    async def slow_step() -> int:
        await asyncio.sleep(0)
        ran.append(1)
        return 1

    @wflo.workflow(name="async-cancel")
    async def flow() -> int:
        return await slow_step()

    async def main() -> None:
        task = asyncio.create_task(flow.options(id="cancel-1").arun())
        while not entered.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()

    _executor.add_guard_factory(factory)
    try:
        asyncio.run(main())
    finally:
        _executor._guard_factories.remove(factory)
    assert seen == ["before", "after CancelledError"]
    assert ran == []
