"""Replay of calls made by a run's asyncio tasks (``asyncio.gather``, ``create_task``).

Tasks share their spawning point's positional numbering: a call is numbered when it starts. A
task's call that follows something whose time varies (a live step, an LLM call, a timer) can
therefore start in another order on resume than when it was recorded. Such a call is replayed
from the entry of the *same request* (name, kind, argument digest), its own position first; a
call with no such entry runs live where no entry is, never from another task's entry
(``RunContext.position``).

Each scenario records with one timing, "dies" (a ``KeyboardInterrupt`` through the run, as a
process going away) and is resumed with the timings reversed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

import wflo
from wflo import _config
from wflo.engine import _boundary

TASKS = 5


def _calls(run_id: str) -> dict[str, dict[str, Any]]:
    events = _config.get_store().events(run_id)
    return {e.data["call"]: e.data for e in events if e.type == "call.completed"}


def _succeeded(run_id: str) -> None:
    store = _config.get_store()
    assert store.get_run(run_id).status == "succeeded"
    calls = [e.data["call"] for e in store.events(run_id) if e.type in ("call.completed", "call.failed")]
    assert len(calls) == len(set(calls)), f"a call id was journaled twice: {calls}"


def test_gathered_tasks_get_their_own_results_after_a_crash(configured: str) -> None:
    """Each of five tasks: ``first(i)`` sleeping a time of its own, then ``second(i)``. Recorded
    with task 0 slowest and the others' ``second`` calls in reverse task order; the process dies
    while task 0 is still in ``first``. On resume the finished ``first`` calls replay at once, in
    task order, so the ``second`` calls start in task order: each must still get its own result
    (on a positional replay task 1 got task 4's, and so on), and none of them run again."""
    ran: Counter[tuple[str, int]] = Counter()
    timing = {"delays": [30.0, 0.20, 0.15, 0.10, 0.05]}
    crash = {"on": True}
    done: dict[str, asyncio.Event] = {}

    @wflo.step(name="tr.first")
    async def first(i: int) -> int:
        ran["first", i] += 1
        await asyncio.sleep(timing["delays"][i])
        return 100 + i

    @wflo.step(name="tr.second")
    async def second(i: int, a: int) -> str:
        ran["second", i] += 1
        return f"second-{i}-{a}"

    async def task(i: int) -> str:
        out = await second(i, await first(i))
        if i and all(ran["second", j] for j in range(1, TASKS)):
            done["others"].set()
        return out

    @wflo.workflow(name="tr.gather")
    async def flow() -> list[str]:
        done["others"] = asyncio.Event()
        tasks = [asyncio.create_task(task(i)) for i in range(TASKS)]
        if crash["on"]:
            await done["others"].wait()
            raise KeyboardInterrupt  # the process dies; task 0 is still in first(0)
        return [await t for t in tasks]

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(flow.options(id="tr-gather").arun())
    recorded = _calls("tr-gather")
    assert [recorded[c]["input"]["args"][0] for c in ("6", "7", "8", "9")] == [4, 3, 2, 1]

    crash["on"] = False
    timing["delays"] = [0.0, 0.05, 0.10, 0.15, 0.20]  # reversed
    assert wflo.resume("tr-gather") == [f"second-{i}-{100 + i}" for i in range(TASKS)]
    assert ran == Counter({**{(k, i): 1 for k in ("first", "second") for i in range(TASKS)}, ("first", 0): 2})
    _succeeded("tr-gather")
    after = _calls("tr-gather")
    assert {c: after[c] for c in recorded} == recorded, "a recorded call was journaled again"


def test_gathered_tasks_after_a_timer_replay_by_request(configured: str) -> None:
    """``asyncio.gather`` of tasks that wait a timer of their own between two steps: the order of
    their second calls is the timers' order. Replayed with the timers reversed, every task gets
    its own recorded results and nothing runs again."""
    ran: Counter[tuple[str, int]] = Counter()
    timing = {"delays": [0.02 * (TASKS - i) for i in range(TASKS)]}
    crash = {"on": True}

    @wflo.step(name="tr.timer.first")
    async def first(i: int) -> int:
        ran["first", i] += 1
        return i * i

    @wflo.step(name="tr.timer.second")
    async def second(i: int) -> str:
        ran["second", i] += 1
        return f"task-{i}"

    async def task(i: int) -> list[Any]:
        a = await first(i)
        await asyncio.sleep(timing["delays"][i])
        return [a, await second(i)]

    @wflo.workflow(name="tr.timer")
    async def flow() -> list[list[Any]]:
        out = list(await asyncio.gather(*(task(i) for i in range(TASKS))))
        if crash["on"]:
            raise KeyboardInterrupt  # the process dies after every call was recorded
        return out

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(flow.options(id="tr-timer").arun())
    recorded = _calls("tr-timer")
    assert [recorded[str(TASKS + k + 1)]["input"]["args"][0] for k in range(TASKS)] == list(range(TASKS))[::-1]
    crash["on"] = False
    timing["delays"].reverse()
    assert wflo.resume("tr-timer") == [[i * i, f"task-{i}"] for i in range(TASKS)]
    assert set(ran.values()) == {1}, f"a finished call ran again: {ran}"
    _succeeded("tr-timer")
    assert _calls("tr-timer") == recorded


@pytest.mark.parametrize("died_in", ["nothing", "root"])
def test_a_root_call_racing_a_child_task(configured: str, died_in: str) -> None:
    """The workflow's own task starts a task, then waits and calls ``work("root")`` while the
    child waits and calls ``work("child")``: recorded child first, replayed root first.

    ``root``: the process died while ``work("root")`` ran, so the journal holds only the child's
    call, at the position the root's call reaches first on resume. The root's call must run (not
    take the child's result), and the child's call still replays its own."""
    ran: Counter[str] = Counter()
    timing = {"root": 0.10, "child": 0.0}
    crash = {"on": True}

    @wflo.step(name="tr.race.work")
    async def work(tag: str) -> str:
        ran[tag] += 1
        if tag == "root" and died_in == "root" and crash["on"]:
            raise KeyboardInterrupt  # the process dies in the root's call
        return f"did {tag}"

    async def child() -> str:
        await asyncio.sleep(timing["child"])
        return await work("child")

    @wflo.workflow(name=f"tr.race.{died_in}")
    async def flow() -> list[str]:
        t = asyncio.create_task(child())
        await asyncio.sleep(timing["root"])
        mine = await work("root")
        out = [mine, await t, await work("after")]
        if crash["on"]:
            raise KeyboardInterrupt
        return out

    run_id = f"tr-race-{died_in}"
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(flow.options(id=run_id).arun())
    recorded = _calls(run_id)
    assert recorded["1"]["input"]["args"] == ["child"]
    crash["on"] = False
    timing.update(root=0.0, child=0.10)
    assert wflo.resume(run_id) == ["did root", "did child", "did after"]
    assert ran["child"] == 1, "the child's finished call ran again"
    assert ran["root"] == (2 if died_in == "root" else 1)
    assert ran["after"] == 1
    _succeeded(run_id)
    outputs = {d["input"]["args"][0]: d["output"] for d in _calls(run_id).values()}
    assert outputs == {"root": "did root", "child": "did child", "after": "did after"}


def test_polls_keep_their_order(configured: str) -> None:
    """A poll step called again and again with the same arguments returns something else each
    time: on replay each call gets the result recorded at its own place, in the workflow's own
    task (positional, as before) and in tasks whose polls interleave otherwise on resume."""
    polls: Counter[str] = Counter()
    # Recorded a1 b1 a2 a3 b2 a4 b3 b4; replayed a1 b1 b2 a2 b3 …: a2 reaches the place of a3,
    # whose request is the same, and must still get a2's result.
    timing = {"a": 0.05, "b": 0.12}
    crash = {"on": True}

    @wflo.step(name="tr.poll.check")
    async def check(job: str) -> str:
        polls[job] += 1
        return f"{job}:{polls[job]}"

    async def poller(job: str) -> list[str]:
        seen = []
        for _ in range(4):
            seen.append(await check(job))
            await asyncio.sleep(timing[job])
        return seen

    @wflo.workflow(name="tr.poll")
    async def flow() -> list[list[str]]:
        own = [await check("root") for _ in range(4)]
        both = await asyncio.gather(poller("a"), poller("b"))
        out = [own, *both, [await check("root")]]
        if crash["on"]:
            raise KeyboardInterrupt
        return out

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(flow.options(id="tr-poll").arun())
    recorded = _calls("tr-poll")
    crash["on"] = False
    timing.update(a=0.13, b=0.08)
    expected = [[f"root:{k}" for k in (1, 2, 3, 4)], [f"a:{k}" for k in (1, 2, 3, 4)]]
    expected += [[f"b:{k}" for k in (1, 2, 3, 4)], ["root:5"]]
    assert wflo.resume("tr-poll") == expected
    assert polls == Counter({"root": 5, "a": 4, "b": 4}), "a finished poll ran again"
    _succeeded("tr-poll")
    assert _calls("tr-poll") == recorded


@pytest.mark.parametrize("digests", ["kept", "stripped"])
def test_a_journal_numbered_as_before_resumes_identically(
    configured: str, digests: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Numbering is unchanged: a journal recorded before (gathered tasks numbered in the order
    they started, the same order on resume) replays every call from its own position. Also for
    journals older than the argument digest (``stripped``: recorded without it), where no call
    can be matched by content: they replay by position, as they always did."""
    ran: Counter[tuple[str, int]] = Counter()
    crash = {"on": True}

    @wflo.step(name="tr.old.first")
    async def first(i: int) -> int:
        ran["first", i] += 1
        await asyncio.sleep(0.01 * i)
        return i

    @wflo.step(name="tr.old.second")
    async def second(i: int) -> int:
        ran["second", i] += 1
        return 10 * i

    async def task(i: int) -> int:
        return await second(await first(i))

    @wflo.workflow(name=f"tr.old.{digests}")
    async def flow() -> list[int]:
        out = list(await asyncio.gather(*(task(i) for i in range(TASKS))))
        if crash["on"]:
            raise KeyboardInterrupt
        return out

    run_id = f"tr-old-{digests}"
    if digests == "stripped":
        real = _boundary._end_data

        def old_end_data(*args: Any, **kwargs: Any) -> dict[str, Any]:
            data = real(*args, **kwargs)
            del data["digest"]
            return data

        monkeypatch.setattr(_boundary, "_end_data", old_end_data)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(flow.options(id=run_id).arun())
    monkeypatch.undo()
    recorded = _calls(run_id)
    assert [recorded[str(k + 1)]["input"]["args"][0] for k in range(TASKS)] == list(range(TASKS))
    crash["on"] = False
    assert wflo.resume(run_id) == [10 * i for i in range(TASKS)]
    assert set(ran.values()) == {1}, f"a finished call ran again: {ran}"
    _succeeded(run_id)
    assert _calls(run_id) == recorded


def test_a_lone_task_replays_by_position(configured: str) -> None:
    """One task, awaited by the workflow, whose calls' arguments differ on replay (a timestamp
    in a prompt): no other task can have made the calls at its positions, so they replay from
    there as sequential code does, not run again."""
    ran: Counter[str] = Counter()
    stamp = {"now": "09:00"}
    crash = {"on": True}

    @wflo.step(name="tr.lone.ask")
    async def ask(prompt: str) -> str:
        ran[prompt] += 1
        return f"answer to {prompt}"

    async def task() -> list[str]:
        return [await ask(f"first, at {stamp['now']}"), await ask(f"then, at {stamp['now']}")]

    @wflo.workflow(name="tr.lone")
    async def flow() -> list[str]:
        out = await asyncio.create_task(task())
        if crash["on"]:
            raise KeyboardInterrupt
        return out

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(flow.options(id="tr-lone").arun())
    crash["on"] = False
    stamp["now"] = "10:00"
    assert wflo.resume("tr-lone") == ["answer to first, at 09:00", "answer to then, at 09:00"]
    assert sum(ran.values()) == 2, f"a call ran again: {ran}"
    _succeeded("tr-lone")


def test_a_task_factory_without_context_still_works(configured: str) -> None:
    """The run marks each task's context by creating it in a copy it passes on (``context=``),
    unless the loop has a task factory: one written before Python 3.11 takes no ``context``."""

    def factory(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=loop)

    @wflo.step(name="tr.factory.echo")
    async def echo(i: int) -> int:
        return i

    @wflo.workflow(name="tr.factory")
    async def flow() -> list[int]:
        return list(await asyncio.gather(*(echo(i) for i in range(3))))

    async def main() -> list[int]:
        asyncio.get_running_loop().set_task_factory(factory)  # type: ignore[arg-type]
        return await flow.options(id="tr-factory").arun()

    assert asyncio.run(main()) == [0, 1, 2]
