"""A resumed run's journal costs under 1 KB per finished step (issue 20), and replays intact."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest

import wflo
from wflo import _config as config
from wflo.engine import RunContext

calls: list[int] = []


@wflo.step
def work(i: int) -> dict[str, Any]:
    calls.append(i)
    return {"i": i, "answer": f"result {i}", "tokens": 120}


@wflo.workflow(name="tests.resume_memory")
def flow(n: int) -> list[Any]:
    return [work(i)["answer"] for i in range(n)]


def test_a_loaded_journal_holds_under_a_kilobyte_per_finished_step(configured: str) -> None:
    steps = 300
    flow.run(steps)
    store = config.get_store()
    record = store.list_runs(workflow="tests.resume_memory", limit=1)[0]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ctx = RunContext.load(store, record, "someone")
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(ctx.journal) == steps
    assert held / steps < 1024, f"{held / steps:.0f} bytes per finished step"
    entry = ctx.journal["7"]
    assert (entry.name, entry.kind, entry.status) == (work.name, "step", "completed")
    assert entry.data["output"] is not None  # the event's data, parsed when read


class _Crash(BaseException):
    """Stands for the process going away mid-run (not an error of the run)."""


crash_at: list[int] = []


@wflo.step
def maybe_crash(i: int) -> dict[str, Any]:
    if crash_at and crash_at[0] == i:
        crash_at.clear()
        raise _Crash
    calls.append(i)
    return {"i": i, "answer": f"result {i}"}


@wflo.workflow(name="tests.resume_memory.crashing")
def crashing(n: int) -> list[Any]:
    return [maybe_crash(i)["answer"] for i in range(n)]


def test_a_resumed_run_replays_finished_steps_from_the_lazy_journal(configured: str) -> None:
    calls.clear()
    crash_at[:] = [3]
    with pytest.raises(_Crash):
        crashing.options(id="r-replay").run(5)
    assert calls == [0, 1, 2]
    assert config.get_store().get_run("r-replay").status == "running"
    assert wflo.resume("r-replay") == [f"result {i}" for i in range(5)]
    assert calls == [0, 1, 2, 3, 4]  # 0..2 came from the journal
