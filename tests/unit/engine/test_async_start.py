"""An async call begun on the event loop (``_boundary._astart``): when it needs no store, its
start costs no hand-off to the store's threads, and call numbering stays the order in which the
run's tasks reached their calls, so a replay after a crash finds every call at its place."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest

import wflo
from wflo import _config
from wflo.engine import Call, Guard, _context, current_run
from wflo.errors import LeaseLost, LoopDetectedError
from wflo.ext import add_guard_factory
from wflo.store import OrderedExecutor

TASKS = 12


def _calls(run_id: str) -> dict[str, dict[str, Any]]:
    events = _config.get_store().events(run_id)
    return {e.data["call"]: e.data for e in events if e.type == "call.completed"}


@pytest.mark.parametrize("shape", ["plain", "mixed"])
def test_gathered_tasks_keep_their_call_numbers_on_replay(configured: str, shape: str) -> None:
    """``asyncio.gather`` of tasks of two steps each. Their first steps are numbered in task
    order; the second ones as the tasks came back. The process then dies; on resume every call
    is replayed from its place (none runs again, no ``NonDeterminismError``).

    ``mixed``: every third first step is at-most-once (begun on the store's threads, as a call
    whose guard needs the store is), so starts on the loop and on the store's threads alternate,
    and whether a start runs on the loop depends on how soon the store's thread ended the one
    before. A start on the loop while another task's start waits there would take its number
    first; one that did not give way to the loop (a replayed call returning at once) would let
    its task reach its second call before the other tasks reached their first; one woken sooner
    than a start on the store's threads would reorder the second calls between the first run
    and the replay.

    (Bodies that await timers are left out: how far each task gets before another one's timer
    fires depends on timing, on the first run and on the replay alike.)"""
    ran: Counter[str] = Counter()
    crash = {"on": True}

    async def body(tag: str, i: int) -> int:
        ran[f"{tag}{i}"] += 1
        return i

    @wflo.step(name="astart.first")
    async def first(i: int) -> int:
        return await body("first", i)

    @wflo.step(name="astart.first_once", at_most_once=True)
    async def first_once(i: int) -> int:
        return await body("first", i)

    @wflo.step(name="astart.second")
    async def second(i: int) -> int:
        return await body("second", i) * 10

    async def task(i: int) -> int:
        one = await (first_once(i) if shape == "mixed" and i % 3 == 0 else first(i))
        return one + await second(i)

    @wflo.workflow(name=f"astart.gather.{shape}")
    async def flow() -> list[int]:
        out = list(await asyncio.gather(*(task(i) for i in range(TASKS))))
        if crash["on"]:
            raise KeyboardInterrupt  # the process dies after every call was recorded
        return out

    run_id = f"astart-{shape}"
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(flow.options(id=run_id).arun())
    calls = _calls(run_id)
    assert len(calls) == 2 * TASKS
    for i in range(TASKS):  # the tasks reached their first calls in their order
        assert calls[str(i + 1)]["input"]["args"] == [i], "a call took another task's place"
    crash["on"] = False
    assert wflo.resume(run_id) == [11 * i for i in range(TASKS)]
    assert set(ran.values()) == {1}, "a finished call ran again"
    assert _config.get_store().get_run(run_id).status == "succeeded"
    assert _calls(run_id) == calls


def _hand_offs(monkeypatch: pytest.MonkeyPatch) -> Counter[Any]:
    """Count, by key, the jobs run on a store thread (not on the thread that submitted them)."""
    seen: Counter[Any] = Counter()
    real = OrderedExecutor.post  # every job goes through it (``submit`` too)

    def post(self: OrderedExecutor, key: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        submitter = threading.current_thread()

        def job() -> Any:
            if threading.current_thread() is not submitter:
                seen[key] += 1
            return fn()

        return real(self, key, job, *args, **kwargs)

    monkeypatch.setattr(OrderedExecutor, "post", post)
    return seen


def test_a_plain_async_step_costs_one_hand_off(configured: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Begun on the loop, recorded on the store's threads: one hand-off per step (two before);
    none on PostgreSQL, whose record is written from the loop (``Store.loop_writer``)."""
    seen = _hand_offs(monkeypatch)

    @wflo.step(name="astart.tiny")
    async def tiny(i: int) -> int:
        return i + 1

    @wflo.workflow(name="astart.steps")
    async def flow(n: int) -> int:
        return sum([await tiny(i) for i in range(n)])

    async def main() -> None:
        assert await flow.options(id="astart-0").arun(0) == 0
        assert await flow.options(id="astart-5").arun(5) == 15

    asyncio.run(main())
    assert seen["astart-5"] - seen["astart-0"] == (0 if configured.startswith("postgresql") else 5)


def test_a_start_in_a_run_of_one_task_takes_no_turn_of_the_loop(configured: str) -> None:
    """With no task created inside the run still running, a plain async step is begun at once
    (``Store.run_here``): nothing else the loop has ready runs between the call and its body
    (before, the start gave way to the loop each time). With tasks of the run running (a
    ``gather``) a start still gives way, keeping the order the tasks reach their calls."""
    seen: list[tuple[str, bool]] = []
    ticked: dict[str, bool] = {}

    @wflo.step(name="astart.look")
    async def look(tag: str) -> str:
        seen.append((tag, ticked[tag]))
        return tag

    async def call(tag: str) -> str:
        ticked[tag] = False
        asyncio.get_running_loop().call_soon(ticked.__setitem__, tag, True)
        return await look(tag)

    @wflo.workflow(name="astart.one_task")
    async def flow() -> list[str]:
        alone = [await call(f"alone{i}") for i in range(3)]
        tasks = list(await asyncio.gather(call("task0"), call("task1")))
        return [*alone, *tasks, await call("after")]  # the gathered tasks are over: alone again

    asyncio.run(flow.options(id="astart-one-task").arun())
    assert seen[:3] == [("alone0", False), ("alone1", False), ("alone2", False)]
    assert sorted(seen[3:5]) == [("task0", True), ("task1", True)]
    assert seen[5:] == [("after", False)]


def test_a_refusal_on_the_loop_is_written_on_the_store_threads(configured: str) -> None:
    """The loop guard stops the third step before it runs, as its start is made on the loop: its
    ``loop.stopped`` event and the refused call's record are written, in that order, and not
    from the loop's thread."""
    ran: list[int] = []
    writers: list[tuple[str, str]] = []
    store = _config.get_store()
    real = store.append

    def append(run_id: str, head: Any, events: Any, **kwargs: Any) -> Any:
        writers.extend((e.type, threading.current_thread().name) for e in events)
        return real(run_id, head, events, **kwargs)

    store.append = append  # type: ignore[method-assign]

    @wflo.step(name="astart.counted")
    async def counted(i: int) -> int:
        ran.append(i)
        return i

    @wflo.workflow(name="astart.capped", guards=wflo.LoopGuard(max_steps=2))
    async def flow() -> int:
        return sum([await counted(i) for i in range(3)])

    try:
        with pytest.raises(LoopDetectedError):
            asyncio.run(flow.options(id="astart-capped").arun())
    finally:
        del store.append
    assert ran == [0, 1]
    types = [e.type for e in store.events("astart-capped")]
    assert types.index("loop.stopped") < types.index("call.failed")
    assert [e.data["call"] for e in store.events("astart-capped") if e.type == "call.failed"] == ["3"]
    for type_, thread in writers:
        if type_ in ("loop.stopped", "call.failed"):
            assert thread.startswith("wflo-store-"), f"{type_} written on {thread}"


class _Lapse(Guard):
    """A guard that needs no store, during whose ``before`` the lease lapses (the clock jumps)
    and another worker takes the run: the call, begun on the loop, must not run."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.armed = False

    def local(self, call: Call) -> bool:
        return True

    def before(self, call: Call) -> None:
        if self.armed:
            self.clock[0] += 3600.0


def test_a_lease_that_lapses_during_a_start_on_the_loop_is_checked_there(
    configured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [0.0]
    real_monotonic = _context.monotonic
    monkeypatch.setattr(_context, "monotonic", lambda: real_monotonic() + clock[0])
    guard = _Lapse(clock)
    monkeypatch.setattr("wflo.engine._executor._guard_factories", [])
    add_guard_factory(lambda wf, record: [guard])
    ran: list[str] = []

    @wflo.step(name="astart.effect")
    async def effect() -> str:
        ran.append("effect")
        return "done"

    @wflo.workflow(name="astart.lapse")
    async def flow() -> str:
        ctx = current_run()
        assert ctx is not None
        first = await effect()
        store = ctx.store
        await store.off_loop(store.release, ctx.run_id, ctx.owner, key=ctx.run_id)
        await store.off_loop(store.claim, ctx.run_id, "other", 60.0, key=ctx.run_id)
        ctx.lease_renewed(_context.monotonic())  # fresh as far as the run knows, till the guard
        guard.armed = True
        return first + await effect()

    with pytest.raises(LeaseLost):
        asyncio.run(flow.arun())
    assert ran == ["effect"]


def test_a_record_whose_lease_was_taken_raises_lease_lost(configured: str) -> None:
    """The lease is taken by another worker while an async step runs: its record (on
    PostgreSQL written from the loop, ``Store.loop_writer``) is refused with ``LeaseLost``,
    nothing is written for the step, and the run knows its lease is lost."""
    seen: dict[str, Any] = {}

    @wflo.step(name="astart.stolen")
    async def stolen() -> str:
        ctx = current_run()
        assert ctx is not None
        seen["ctx"] = ctx
        store = ctx.store
        await store.off_loop(store.release, ctx.run_id, ctx.owner, key=ctx.run_id)
        await store.off_loop(store.claim, ctx.run_id, "other", 60.0, key=ctx.run_id)
        return "done"

    @wflo.workflow(name="astart.stolen")
    async def flow() -> str:
        return await stolen()

    with pytest.raises(LeaseLost):
        asyncio.run(flow.options(id="astart-stolen").arun())
    assert seen["ctx"].lease_lost
    assert _calls("astart-stolen") == {}
    assert _config.get_store().get_run("astart-stolen").lease_owner == "other"


@pytest.mark.postgres
def test_a_sync_step_on_the_loop_while_a_record_is_in_flight_appends_after_it(pg_url: str) -> None:
    """Task A's async step is recorded from the loop (``Store.loop_writer``) and the server
    holds its commit (a trigger sleeps); meanwhile task B calls a sync step on the loop's
    thread. B's record must wait for A's (the write lock is re-entrant on that thread): it
    completes A's exchange first, then appends on the head A left. Both recorded, no
    ``LeaseLost``; the process then dies and the resume replays both."""
    wflo.configure(database=pg_url, lease_seconds=5.0, poll_interval=0.05)
    store = _config.get_store()
    store.write(
        lambda cur: cur.execute(
            "CREATE FUNCTION held() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.type = 'call.completed' AND NEW.data LIKE '%astart.held_a%' "
            "THEN PERFORM pg_sleep(0.5); END IF; RETURN NEW; END $$;"
            "CREATE TRIGGER held BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION held()"
        )
    )
    ran: Counter[str] = Counter()
    crash = {"on": True}
    on_loop: dict[str, int] = {}

    @wflo.step(name="astart.held_a")
    async def held_a() -> str:
        ran["a"] += 1
        return "a"

    @wflo.step(name="astart.sync_b")
    def sync_b() -> str:
        ran["b"] += 1
        on_loop["b"] = threading.get_ident()
        return "b"

    async def task_b() -> str:
        await asyncio.sleep(0.15)  # A's record is in flight by now (the server sleeps 0.5 s)
        return sync_b()

    @wflo.workflow(name="astart.held")
    async def flow() -> list[str]:
        on_loop["loop"] = threading.get_ident()
        out = list(await asyncio.gather(held_a(), task_b()))
        if crash["on"]:
            raise KeyboardInterrupt  # the process dies after both calls were recorded
        return out

    run_id = "astart-held"
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(flow.options(id=run_id).arun())
    assert on_loop["b"] == on_loop["loop"], "the sync step did not run on the loop's thread"
    events = store.events(run_id)
    done = [e.data["name"] for e in events if e.type == "call.completed"]
    assert done == ["astart.held_a", "astart.sync_b"], "B's record did not follow A's"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    crash["on"] = False
    assert wflo.resume(run_id) == ["a", "b"]
    assert ran == {"a": 1, "b": 1}, "a recorded call ran again"
    assert store.get_run(run_id).status == "succeeded"


def test_a_steps_record_is_awaited_through_no_coroutine_but_the_steps(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a plain async step's record is written on a store thread, the run's task awaits
    it through the step's own coroutine (``aguarded_call``) and the store's ``off_loop``, with
    no coroutine between that only passes the outcome through (before: ``_afinish`` and the
    engine's ``off_loop``, each a frame on every resumption)."""
    from wflo.engine import _boundary

    _config.configure(database=sqlite_url, lease_seconds=5.0)
    chains: list[list[str]] = []
    tasks: list[asyncio.Task[Any]] = []
    real = _boundary.finish_call

    def finish_call(call: Call, *args: Any, **kwargs: Any) -> Any:
        if call.name == "layers.tiny" and threading.current_thread().name.startswith("wflo-store-"):
            names: list[str] = []
            coro: Any = tasks[0].get_coro()
            while coro is not None and hasattr(coro, "cr_code"):
                names.append(coro.cr_code.co_name)
                coro = coro.cr_await
            chains.append(names[names.index("flow") + 1 :])
        return real(call, *args, **kwargs)

    monkeypatch.setattr(_boundary, "finish_call", finish_call)

    @wflo.step(name="layers.tiny")
    async def tiny(i: int) -> int:
        return i + 1

    @wflo.workflow(name="layers.flow")
    async def flow() -> int:
        total = 0
        for i in range(3):
            total += await tiny(i)
        return total

    async def main() -> int:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        return await flow.options(id="layers-1").arun()

    assert asyncio.run(main()) == 6
    assert chains == [["aguarded_call", "off_loop"]] * 3
