"""Async parity: ``async def`` workflows, steps and tools behave as their sync forms do (both stores).

Each test here is the async variant of what a sync test checks, and failed before its fix:

- an exception group a step raised (what a ``TaskGroup`` inside an async step raises) is raised
  again on replay as an exception group with the same sub-exceptions, so ``except*`` takes the
  same branch as on the first run (it came back a ``StepFailedError`` and the resumed run failed
  where the first one had caught the error and gone on);
- an async call waiting for its rate-limit turn (``wflo.policies.rate_limit``) waits on its event
  loop, not on one of the store's threads, which every async run of the process shares (two on
  SQLite): other runs' store work no longer waits behind it.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

import wflo
from rate_waits import store_work_behind_waits
from wflo import _config
from wflo.engine import RunHandle


def test_an_exception_group_a_step_raised_is_raised_again_on_replay(configured: str) -> None:
    counts: Counter[str] = Counter()
    state = {"die": True}

    @wflo.step(name="parity.part")
    async def part(i: int) -> None:
        raise ValueError(f"part {i} failed")

    @wflo.step(name="parity.grouped")
    async def grouped() -> None:
        counts["grouped"] += 1
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(part(1))
            tasks.create_task(part(2))

    @wflo.step(name="parity.die")
    async def die() -> None:
        if state["die"]:
            raise KeyboardInterrupt  # stands in for the process dying after the group was journaled

    @wflo.workflow(name="parity.group")
    async def flow() -> list[str]:
        try:
            await grouped()
        except* ValueError as group:
            caught = sorted(str(e) for e in group.exceptions)
        await die()
        return caught

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(flow.options(id="parity-group").arun())
    state["die"] = False
    assert wflo.resume("parity-group") == ["part 1 failed", "part 2 failed"]  # was: StepFailedError, run failed
    assert counts["grouped"] == 1  # replayed, not run again
    (failed,) = [
        e.data for e in RunHandle("parity-group").events() if e.type == "call.failed" and e.data["call"] == "1"
    ]
    assert failed["error"]["group"]["message"] == "unhandled errors in a TaskGroup"
    assert [e["message"] for e in failed["error"]["group"]["exceptions"]] == ["part 1 failed", "part 2 failed"]


def test_an_exception_group_of_any_size_and_depth_is_journaled_and_rebuilt() -> None:
    from wflo.engine._serialize import MAX_GROUP, error_data, rebuild_error

    class Odd(ExceptionGroup):  # type: ignore[type-arg]
        def __new__(cls, note: int) -> Odd:  # not (message, exceptions): rebuilt as a plain group
            return super().__new__(cls, f"odd {note}", [KeyError(note)])

        def __init__(self, note: int) -> None:
            super().__init__(f"odd {note}", [KeyError(note)])

    nested: BaseException = ValueError("core")
    for depth in range(30):
        nested = ExceptionGroup(f"level {depth}", [nested])
    wide = BaseExceptionGroup("wide", [KeyboardInterrupt(), *[ValueError(str(i)) for i in range(MAX_GROUP + 5)]])
    for original in (nested, wide, Odd(3)):
        data = error_data(original)
        assert len(str(data)) < 100_000
        rebuilt = rebuild_error(data, "s")
        assert isinstance(rebuilt, BaseExceptionGroup) and type(rebuilt) in (
            type(original),
            BaseExceptionGroup,
            ExceptionGroup,
        )
    assert len(rebuild_error(error_data(wide), "s").exceptions) == MAX_GROUP  # type: ignore[attr-defined]
    assert error_data(wide)["group"]["more"] == 6
    odd = rebuild_error(error_data(Odd(3)), "s")
    assert isinstance(odd, ExceptionGroup) and isinstance(odd.exceptions[0], KeyError)


def test_a_rate_limit_turn_an_async_call_waits_for_holds_no_store_thread(configured: str) -> None:
    threads = _config.get_store()._offloader().threads  # the store's threads, shared by every async run here
    limit = wflo.policies.rate_limit("step:parity.limited", requests_per_minute=30, max_wait="2.5s")
    try:

        @wflo.step(name="parity.limited")
        async def limited() -> str:
            return "taken"

        @wflo.workflow(name="parity.waits")
        async def waits() -> str:
            try:
                return await limited()
            except wflo.errors.RateLimitedError:
                return "refused"

        results, took = store_work_behind_waits(limit, waits, "parity")
    finally:
        wflo.policies.clear()
    # Before, each waiting call slept on a store thread: with all of them asleep, the free run's
    # store work waited for the first turn (~1.7 s here).
    assert took < 0.8, f"a run's store work waited {took:.2f} s behind other runs' rate-limit waits"
    assert results.count("taken") >= 1 and set(results) <= {"taken", "refused"}, results
    waited = [
        e.data["rate_limit"] for i in range(threads) for e in RunHandle(f"parity-wait-{i}").events()
        if e.type == "call.completed" and "rate_limit" in e.data
    ]  # fmt: skip
    assert waited and all(w[0]["target"] == "step:parity.limited" and w[0]["waited_s"] > 1.0 for w in waited)


def test_gathered_calls_in_flight_when_a_sibling_waits_are_recorded_not_run_again(configured: str) -> None:
    # One gathered task asks for an approval (the run waits) while its siblings' steps are still
    # running. gather hands the suspension on at once: the run ended, the siblings' results came
    # after its end and were refused, and the resumed run ran all three steps again.
    from wflo.engine import Worker

    effects: Counter[str] = Counter()

    @wflo.step
    async def slow(i: int) -> int:
        effects[f"slow{i}"] += 1
        await asyncio.sleep(0.3)
        return i

    @wflo.tool(approval=wflo.Approval(approvers=["user:fin"]))
    async def pay(n: int) -> str:
        effects[f"pay{n}"] += 1
        return "paid"

    @wflo.workflow(name="parity.gather-wait")
    async def flow() -> list[object]:
        return list(await asyncio.gather(pay(1), slow(1), slow(2), slow(3)))

    handle = flow.start()
    Worker(concurrency=1, workflows=["parity.gather-wait"]).run(max_runs=1, idle_timeout=2)
    assert handle.status() == "waiting"
    types = [e.type for e in handle.events()]
    assert types.count("call.completed") == 3 and types[-1] == "run.waiting", types  # recorded before the wait
    (request,) = wflo.approvals.list(run_id=handle.id)
    wflo.approvals.approve(request.id, principal="user:fin", action_hash=request.action_hash)
    assert Worker(concurrency=1, workflows=["parity.gather-wait"]).run(max_runs=1, idle_timeout=5) == 1
    assert handle.result(timeout=5) == ["paid", 1, 2, 3]
    assert effects == Counter(slow1=1, slow2=1, slow3=1, pay1=1), effects
