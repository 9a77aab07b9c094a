"""Async parity: ``async def`` workflows, steps and tools behave as their sync forms do (both stores).

Each test here is the async variant of what a sync test checks, and failed before its fix:

- an exception group a step raised (what a ``TaskGroup`` inside an async step raises) is raised
  again on replay as an exception group with the same sub-exceptions, so ``except*`` takes the
  same branch as on the first run (it came back a ``StepFailedError`` and the resumed run failed
  where the first one had caught the error and gone on);
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

import wflo
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
