"""Workflows and steps on both stores: results, replay, errors, children, async, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter

import pytest

import wflo
from wflo import _config
from wflo.engine import RunHandle
from wflo.store import NewEvent


def test_run_returns_result_and_journals_each_step(configured: str) -> None:
    seen: list[str] = []

    @wflo.step
    def fetch(url: str) -> str:
        seen.append(url)
        return "x" * len(url)

    @wflo.workflow(name="research")
    def research(topic: str) -> dict[str, object]:
        page = fetch("https://example.org/" + topic)
        return {"topic": topic, "chars": len(page)}

    assert research.run("otters") == {"topic": "otters", "chars": 26}
    assert seen == ["https://example.org/otters"]
    run = _config.get_store().list_runs(workflow="research")[0]
    assert run.status == "succeeded"
    types = [e.type for e in _config.get_store().events(run.id)]
    assert types == ["run.created", "run.started", "call.completed", "run.completed"]
    step_event = _config.get_store().events(run.id)[2]
    assert step_event.data["name"].endswith("fetch")
    assert step_event.data["input"] == {"args": ["https://example.org/otters"], "kwargs": {}}
    assert step_event.data["output"] == "x" * 26


def test_step_outside_workflow_is_a_plain_function(configured: str) -> None:
    @wflo.step
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    assert _config.get_store().list_runs() == []


def test_replay_returns_recorded_results_without_running_steps(configured: str) -> None:
    counts: Counter[str] = Counter()
    crash = {"at": "second"}

    @wflo.step
    def first() -> int:
        counts["first"] += 1
        return 1

    @wflo.step
    def second(x: int) -> int:
        counts["second"] += 1
        if crash["at"] == "second":
            raise KeyboardInterrupt  # stands in for the process dying mid-step
        return x + 1

    @wflo.workflow
    def flow() -> int:
        return second(first()) * 10

    with pytest.raises(KeyboardInterrupt):
        flow.options(id="replay-1").run()
    assert _config.get_store().get_run("replay-1").status == "running"
    crash["at"] = ""
    assert wflo.resume("replay-1") == 20
    assert counts == {"first": 1, "second": 2}  # finished step once, in-flight step again
    events = [e.type for e in _config.get_store().events("replay-1")]
    assert "run.resumed" in events and events[-1] == "run.completed"


def test_recorded_error_is_reraised_on_replay(configured: str) -> None:
    counts: Counter[str] = Counter()
    state = {"die": True}

    @wflo.step
    def bad() -> None:
        counts["bad"] += 1
        raise ValueError("no such order")

    @wflo.step
    def later() -> None:
        if state["die"]:
            raise KeyboardInterrupt

    @wflo.workflow
    def flow() -> str:
        try:
            bad()
        except ValueError as exc:
            caught = str(exc)
        later()
        return caught

    with pytest.raises(KeyboardInterrupt):
        flow.options(id="err-1").run()
    state["die"] = False
    assert wflo.resume("err-1") == "no such order"
    assert counts["bad"] == 1


def test_nondeterminism_is_detected_and_leaves_the_run_blocked_for_fixed_code(configured: str) -> None:
    mode = {"v": 1}

    @wflo.step
    def a() -> int:
        return 1

    @wflo.step
    def b() -> int:
        return 2

    @wflo.step
    def stop() -> None:
        if mode["v"] == 1:
            raise KeyboardInterrupt

    @wflo.workflow
    def flow() -> int:
        x = b() if mode["v"] == 2 else a()
        stop()
        return x

    with pytest.raises(KeyboardInterrupt):
        flow.options(id="nd-1").run()
    mode["v"] = 2  # a code change: another step where the journal has a()
    with pytest.raises(wflo.errors.NonDeterminismError) as info:
        wflo.resume("nd-1")
    assert info.value.call_id == "1"
    assert "a" in info.value.expected and "b" in info.value.found
    # Not failed: blocked with the evidence, and no worker claims it in the meantime.
    store = _config.get_store()
    run = store.get_run("nd-1")
    assert run.status == "blocked" and run.error is None and run.lease_owner is None
    blocked = [e.data for e in store.events("nd-1") if e.type == "run.blocked"]
    assert blocked[0]["reason"] == "non_determinism" and blocked[0]["error"]["fields"]["call_id"] == "1"
    assert "wflo runs resume nd-1" in blocked[0]["fix"]
    assert store.claim_next("someone:1:x", 30) is None
    # Fixed code (the journal's path again) resumes it to the end.
    mode["v"] = 3
    assert wflo.resume("nd-1") == 1
    assert store.get_run("nd-1").status == "succeeded"


def test_nondeterminism_caught_by_the_code_still_blocks_the_run(configured: str) -> None:
    mode = {"v": 1}

    @wflo.step
    def a() -> int:
        return 1

    @wflo.step
    def b() -> int:
        return 2

    @wflo.step
    def stop() -> None:
        if mode["v"] == 1:
            raise KeyboardInterrupt

    @wflo.workflow
    def flow() -> str:
        with contextlib.suppress(Exception):  # agent code that swallows everything
            b() if mode["v"] == 2 else a()
        with contextlib.suppress(Exception):
            a()  # any later call re-raises: the journal must not mix two code versions
        stop()
        return "finished anyway"

    with pytest.raises(KeyboardInterrupt):
        flow.options(id="nd-2").run()
    mode["v"] = 2
    with pytest.raises(wflo.errors.NonDeterminismError):
        wflo.resume("nd-2")
    assert _config.get_store().get_run("nd-2").status == "blocked"


def test_at_most_once_step_in_flight_fails_loudly(configured: str) -> None:
    counts: Counter[str] = Counter()

    @wflo.step(at_most_once=True)
    def charge_card() -> str:
        counts["charge"] += 1
        raise KeyboardInterrupt  # the process dies while the charge is in flight

    @wflo.workflow
    def flow() -> str:
        return charge_card()

    with pytest.raises(KeyboardInterrupt):
        flow.options(id="amo-1").run()
    with pytest.raises(wflo.errors.AtMostOnceError) as info:
        wflo.resume("amo-1")
    assert counts["charge"] == 1
    assert "charge_card" in info.value.step
    assert _config.get_store().get_run("amo-1").status == "failed"


def test_unserializable_output_names_the_step(configured: str) -> None:
    @wflo.step
    def make_lock() -> object:
        return threading.Lock()

    @wflo.workflow
    def flow() -> None:
        make_lock()

    with pytest.raises(wflo.errors.SerializationError) as info:
        flow.run()
    assert "make_lock" in str(info.value) and "output" in str(info.value)


def test_unserializable_input_fails_before_the_step_runs(configured: str) -> None:
    ran = []

    @wflo.step
    def use(x: object) -> None:
        ran.append(x)

    @wflo.workflow
    def flow() -> None:
        use(object())

    with pytest.raises(wflo.errors.SerializationError, match="input of step"):
        flow.run()
    assert ran == []


def test_pickle_serializer_round_trips(configured: str) -> None:
    import datetime

    @wflo.step(serializer="pickle")
    def when() -> datetime.date:
        return datetime.date(2026, 11, 24)

    @wflo.step
    def die(flag: bool) -> None:
        if flag:
            raise KeyboardInterrupt

    state = {"die": True}

    @wflo.workflow
    def flow() -> str:
        d = when()
        die(state["die"])
        return d.isoformat()

    with pytest.raises(KeyboardInterrupt):
        flow.options(id="pk-1").run()
    state["die"] = False
    assert wflo.resume("pk-1") == "2026-11-24"


def test_retries_then_success_are_journaled(configured: str) -> None:
    attempts = []

    @wflo.step(retries=2, retry_delay=0.001)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("reset")
        return "ok"

    @wflo.workflow
    def flow() -> str:
        return flaky()

    assert flow.options(id="rt-1").run() == "ok"
    types = [e.type for e in _config.get_store().events("rt-1")]
    assert types.count("call.retry") == 2
    done = next(e for e in _config.get_store().events("rt-1") if e.type == "call.completed")
    assert done.data["attempts"] == 3


def test_workflow_failure_is_recorded_and_raised(configured: str) -> None:
    @wflo.workflow
    def flow() -> None:
        raise RuntimeError("bad input")

    with pytest.raises(RuntimeError, match="bad input"):
        flow.options(id="wf-err").run()
    run = _config.get_store().get_run("wf-err")
    assert run.status == "failed" and run.error["message"] == "bad input"
    with pytest.raises(wflo.RunFailedError, match="failed"):
        RunHandle("wf-err").result()


def test_same_id_returns_the_finished_run(configured: str) -> None:
    counts: Counter[str] = Counter()

    @wflo.workflow
    def flow(x: int) -> int:
        counts["run"] += 1
        return x * 2

    assert flow.options(id="idem").run(4) == 8
    assert flow.options(id="idem").run(4) == 8
    assert counts["run"] == 1


def test_child_workflow_runs_once_across_parent_replay(configured: str) -> None:
    counts: Counter[str] = Counter()
    state = {"die": True}

    @wflo.workflow
    def child(n: int) -> int:
        counts["child"] += 1
        return n + 1

    @wflo.step
    def boom() -> None:
        if state["die"]:
            raise KeyboardInterrupt

    @wflo.workflow
    def parent(n: int) -> int:
        value = child(n)
        boom()
        return value * 10

    with pytest.raises(KeyboardInterrupt):
        parent.options(id="par-1").run(1)
    state["die"] = False
    assert wflo.resume("par-1") == 20
    assert counts["child"] == 1
    children = _config.get_store().list_runs(parent_id="par-1")
    assert len(children) == 1 and children[0].status == "succeeded"


def test_an_async_parent_awaits_its_async_children_and_replays_them(configured: str) -> None:
    # ``await child(x)`` in an async parent: the call ran the child synchronously, blocking the
    # loop, and handed back its result, which the ``await`` refused (TypeError).
    counts: Counter[str] = Counter()
    state = {"die": True}

    @wflo.workflow(name="async-kid")
    async def kid(n: int) -> int:
        counts[f"kid{n}"] += 1
        await asyncio.sleep(0)
        return n * 2

    @wflo.step
    async def boom() -> None:
        if state["die"]:
            raise KeyboardInterrupt

    @wflo.workflow(name="async-parent")
    async def parent() -> int:
        one = await kid(1)
        two, three = await asyncio.gather(kid(2), kid(3))
        await boom()
        return one + two + three

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(parent.options(id="apar-1").arun())
    state["die"] = False
    assert wflo.resume("apar-1") == 12
    assert counts == Counter(kid1=1, kid2=1, kid3=1), counts  # replayed, not run again
    children = _config.get_store().list_runs(parent_id="apar-1")
    assert sorted(c.status for c in children) == ["succeeded"] * 3
    assert kid(5) == 10  # sync code (no loop running) still runs an async workflow and returns its result


def test_async_workflow_and_steps(configured: str) -> None:
    @wflo.step
    async def inc(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    @wflo.workflow
    async def flow(n: int) -> int:
        a, b = await asyncio.gather(inc(n), inc(n + 10))
        return a + b

    assert asyncio.run(flow.arun(1)) == 14
    assert flow.run(2) == 16  # an async workflow can be run from sync code too
    run = _config.get_store().list_runs()[0]
    assert [e.data["call"] for e in _config.get_store().events(run.id) if e.type == "call.completed"] == ["1", "2"]


def test_nested_steps_get_hierarchical_ids(configured: str) -> None:
    @wflo.step
    def inner(x: int) -> int:
        return x + 1

    @wflo.step
    def outer(x: int) -> int:
        return inner(x) + inner(x)

    @wflo.workflow
    def flow() -> int:
        return outer(1) + inner(0)

    assert flow.options(id="nest").run() == 5
    calls = [e.data["call"] for e in _config.get_store().events("nest") if e.type == "call.completed"]
    assert calls == ["1.1", "1.2", "1", "2"]


def test_start_and_worker(configured: str) -> None:
    @wflo.workflow(name="double")
    def double(x: int) -> int:
        return x * 2

    handles = [double.start(i) for i in range(5)]
    assert all(h.status() == "queued" for h in handles)
    worker = wflo.engine.Worker(concurrency=2, workflows=["double"])
    assert worker.run(max_runs=5, idle_timeout=5) == 5
    assert [h.result(timeout=5) for h in handles] == [0, 2, 4, 6, 8]


def test_result_timeout(configured: str) -> None:
    @wflo.workflow(name="never-served")
    def never() -> None:
        return None

    handle = never.start()
    with pytest.raises(wflo.errors.ResultTimeoutError):
        handle.result(timeout=0.05)


def test_cancel_stops_at_next_step_boundary(configured: str) -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    @wflo.step
    def slow() -> None:
        ran.append("slow")
        started.set()
        release.wait(5)

    @wflo.step
    def after() -> None:
        ran.append("after")

    @wflo.workflow
    def flow() -> None:
        slow()
        after()

    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            flow.options(id="cx").run()
        except BaseException as exc:
            outcome["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    assert started.wait(5)
    assert RunHandle("cx").cancel() == "running"
    release.set()
    t.join(5)
    assert isinstance(outcome["error"], wflo.errors.RunCancelled)
    assert not isinstance(outcome["error"], Exception)  # agent code's `except Exception` can't eat it
    assert ran == ["slow"]
    assert _config.get_store().get_run("cx").status == "cancelled"


def test_cancel_of_queued_run_is_immediate(configured: str) -> None:
    @wflo.workflow(name="queued-only")
    def flow() -> None:
        return None

    handle = flow.start()
    assert handle.cancel() == "cancelled"
    assert handle.events()[-1].type == "run.cancelled"


def test_stale_owner_cannot_write(configured: str) -> None:
    @wflo.workflow(name="fenced")
    def flow() -> None:
        return None

    handle = flow.start()
    store = _config.get_store()
    first = store.claim_next("worker-a", 0.01)
    assert first is not None
    import time

    time.sleep(0.05)
    second = store.claim_next("worker-b", 5)
    assert second is not None and second.id == handle.id
    from wflo._errors import LeaseLost
    from wflo.store import Head

    with pytest.raises(LeaseLost):
        store.append(first.id, Head(first.last_seq, first.last_hash), [NewEvent("x", {})], owner="worker-a")


def test_nondeterminism_in_a_child_blocks_parent_and_child_and_fixed_code_finishes_both(configured: str) -> None:
    mode = {"v": 1}

    @wflo.step
    def a() -> int:
        return 1

    @wflo.step
    def b() -> int:
        return 2

    @wflo.step
    def stop() -> None:
        if mode["v"] == 1:
            raise KeyboardInterrupt

    @wflo.workflow(name="nd-child")
    def child() -> int:
        x = b() if mode["v"] == 2 else a()
        stop()
        return x

    @wflo.workflow(name="nd-parent")
    def parent() -> int:
        return child() + 10

    with pytest.raises(KeyboardInterrupt):
        parent.options(id="nd-p").run()
    mode["v"] = 2
    with pytest.raises(wflo.errors.NonDeterminismError):
        wflo.resume("nd-p")
    store = _config.get_store()
    child_id = next(r.id for r in store.list_runs(workflow="nd-child"))
    assert store.get_run("nd-p").status == "blocked" and store.get_run(child_id).status == "blocked"
    # Not journaled as the child call's result: the parent would re-raise it forever on replay.
    assert not [e for e in store.events("nd-p") if e.type == "call.failed"]
    mode["v"] = 3
    assert wflo.resume("nd-p") == 11
    assert store.get_run(child_id).status == "succeeded"
