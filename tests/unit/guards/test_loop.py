"""P2 detectors on scripted signature streams: each fires where documented, with evidence,
and healthy streams that merely look busy are never stopped."""

from __future__ import annotations

import itertools
import json
import pickle
import threading
import tracemalloc
from decimal import Decimal
from typing import Any

import pytest

from wflo._errors import LoopDetectedError, RunStopped, UserError
from wflo.guards import LoopGuard, LoopState, Outcome, Signature, digest

OK = Outcome()


class Agent:
    """Drives a LoopState the way the call boundary does: before, (call), after."""

    def __init__(self, guard: LoopGuard, *, start: float = 0.0, step: float = 1.0) -> None:
        self.state = LoopState(guard, started_at=start, run_id="run-1", clock=lambda: 0.0)
        self.seq = 0
        self.t = start
        self.step = step

    def sig(self, kind: str, name: str, args: Any) -> Signature:
        self.seq += 1
        self.t += self.step
        return Signature(self.seq, kind, name, digest(args), at=self.t)

    def call(self, kind: str, name: str, args: Any = None, outcome: Outcome = OK) -> Signature:
        s = self.sig(kind, name, args)
        self.state.before(s)
        self.state.after(s, outcome)
        return s

    def tool(self, name: str, args: Any = None, outcome: Outcome = OK) -> Signature:
        return self.call("tool", name, args, outcome)

    def llm(self, text: str, cost: str = "0") -> Signature:
        out = Outcome(output_digest=digest(text), cost_usd=Decimal(cost))
        return self.call("llm", "gpt-4o-mini", {"turn": self.seq}, out)


def seqs(calls: list[dict[str, Any]]) -> list[Any]:
    return [c["seq"] for c in calls]


# ---------------------------------------------------------------- max_repeats
def test_same_call_forever_is_refused_at_repeat_k_plus_1() -> None:
    agent = Agent(LoopGuard(max_repeats=3))
    with pytest.raises(LoopDetectedError) as info:
        for _ in range(100):
            agent.tool("search", {"q": "otters"})
    err = info.value
    assert err.detector == "max_repeats" and err.run_id == "run-1"
    ev = err.evidence
    assert ev["count"] == 4 and ev["limit"] == 3 and ev["name"] == "search" and ev["kind"] == "tool"
    assert ev["args_digest"] == digest({"q": "otters"})
    assert seqs(ev["calls"]) == [1, 2, 3] and ev["call"]["seq"] == 4  # the 4th never ran
    assert ev["summary"] and "\n" not in ev["summary"] and ev["detector"] == "max_repeats"
    assert agent.state.counts["tool"] == 3
    json.dumps(ev)  # journaled as JSON
    back = pickle.loads(pickle.dumps(err))
    assert back.evidence == ev and str(back) == str(err)


def test_repeats_between_llm_calls_name_the_tool_calls() -> None:
    agent = Agent(LoopGuard(max_repeats=3))
    with pytest.raises(LoopDetectedError) as info:
        for i in range(100):
            agent.llm(f"thinking {i}")
            agent.tool("search", {"q": "otters"})
    assert seqs(info.value.evidence["calls"]) == [2, 4, 6] and info.value.evidence["call"]["seq"] == 8


@pytest.mark.parametrize(("period", "fires_at"), [(2, 5), (3, None)])
def test_repeat_window_is_consecutive_calls_including_this_one(period: int, fires_at: int | None) -> None:
    # max_repeats=2 within 5 calls: every 2nd call identical fires at its 3rd occurrence (call 5);
    # every 3rd call never has 3 occurrences within 5 consecutive calls.
    agent = Agent(LoopGuard(max_repeats=2, repeat_window=5, max_oscillation=None))
    fired = None
    for i in range(60):
        try:
            if i % period == 0:
                agent.tool("poll", {"job": 1})
            else:
                agent.tool("other", {"i": i})
        except LoopDetectedError:
            fired = agent.seq
            break
    assert fired == fires_at


# ---------------------------------------------------------------- max_oscillation
def test_two_call_oscillation_is_refused_at_the_start_of_cycle_k_plus_1() -> None:
    agent = Agent(LoopGuard(max_repeats=None, max_oscillation=4))
    script = itertools.cycle([("search", {"q": "a"}), ("fetch", {"url": "b"})])
    with pytest.raises(LoopDetectedError) as info:
        for name, args in script:
            agent.tool(name, args)
    ev = info.value.evidence
    assert info.value.detector == "max_oscillation" and ev["period"] == 2 and ev["cycles"] == 4
    assert [c["name"] for c in ev["cycle"]] == ["search", "fetch"]
    assert seqs(ev["calls"]) == list(range(1, 9)) and ev["call"]["seq"] == 9 and ev["count"] == 9


def test_three_call_oscillation() -> None:
    agent = Agent(LoopGuard(max_repeats=None, max_oscillation=4))
    script = itertools.cycle(["plan", "act", "check"])
    with pytest.raises(LoopDetectedError) as info:
        for name in script:
            agent.tool(name, {})
    ev = info.value.evidence
    assert ev["period"] == 3 and [c["name"] for c in ev["cycle"]] == ["plan", "act", "check"]
    assert ev["call"]["seq"] == 13 and len(ev["calls"]) == 12


def test_oscillation_is_seen_among_tool_calls_whatever_llm_calls_come_between() -> None:
    agent = Agent(LoopGuard(max_repeats=None, max_oscillation=3))
    with pytest.raises(LoopDetectedError) as info:
        for i in range(100):
            agent.llm(f"thought {i}")
            agent.tool("search" if i % 2 == 0 else "fetch", {"x": i % 2})
    assert info.value.detector == "max_oscillation"
    assert info.value.evidence["call"]["seq"] == 14  # 3 cycles = 6 tool calls ran, the 7th refused


# ---------------------------------------------------------------- max_same_error
def _fail(msg: str = "upstream 503") -> Outcome:
    return Outcome.failure(ConnectionError(msg))


def test_same_error_k_times_in_a_row_stops_after_the_kth() -> None:
    agent = Agent(LoopGuard(max_same_error=3))
    with pytest.raises(LoopDetectedError) as info:
        for i in range(100):
            agent.llm(f"try again {i}")  # succeeds every time: must not hide the tool's failures
            agent.tool("flaky_api", {"x": i}, _fail())
    ev = info.value.evidence
    assert info.value.detector == "max_same_error"
    assert ev["error"] == "ConnectionError: upstream 503" and ev["count"] == 3
    assert seqs(ev["calls"]) == [2, 4, 6] and ev["error_type"] == "ConnectionError"
    assert agent.state.counts["tool"] == 3  # the 3rd failure ran, then the run stopped


def test_a_success_or_another_error_breaks_the_streak() -> None:
    agent = Agent(LoopGuard(max_same_error=3))
    pattern = itertools.cycle([_fail(), _fail(), OK, _fail("other"), _fail(), _fail("other")])
    for i in range(300):
        agent.tool("api", {"x": i}, next(pattern))


# ---------------------------------------------------------------- max_no_progress
def test_same_answer_every_turn_is_no_progress() -> None:
    agent = Agent(LoopGuard(max_no_progress=3))
    with pytest.raises(LoopDetectedError) as info:
        for _ in range(100):
            agent.llm("I will look into it.")
    ev = info.value.evidence
    assert info.value.detector == "max_no_progress" and ev["count"] == 3
    assert seqs(ev["calls"]) == [2, 3, 4]  # the 1st answer was new


def test_agent_repeating_itself_with_its_tools_is_no_progress() -> None:
    agent = Agent(LoopGuard(max_repeats=None, max_oscillation=None, max_no_progress=4))
    same = Outcome(output_digest=digest("no results"))
    with pytest.raises(LoopDetectedError) as info:
        for _ in range(100):
            agent.llm("let me search again")
            agent.tool("search", {"q": "otters"}, same)
    assert info.value.evidence["count"] == 4 and agent.seq == 6


def test_new_arguments_with_the_same_output_are_progress() -> None:
    # write_file -> "ok" and searches that find nothing are new actions, not a loop.
    agent = Agent(LoopGuard(max_no_progress=2))
    for i in range(200):
        agent.llm(f"step {i}")
        agent.tool("write_file", {"path": f"f{i}.txt"}, Outcome(output_digest=digest("ok")))
        agent.tool("search", {"q": f"query {i}"}, Outcome(output_digest=digest([])))


# ---------------------------------------------------------------- max_spend_rate
def test_fast_spend_is_stopped() -> None:
    agent = Agent(LoopGuard(max_spend_rate="1.00/min"), step=1.0)
    with pytest.raises(LoopDetectedError) as info:
        for i in range(100):
            agent.llm(f"answer {i}", cost="0.30")
    ev = info.value.evidence
    assert info.value.detector == "max_spend_rate" and agent.seq == 4
    assert Decimal(ev["spent"]) == Decimal("1.20") and ev["window_s"] == 60
    assert seqs(ev["calls"]) == [1, 2, 3, 4] and ev["calls"][0]["cost_usd"] == "0.30"


def test_slow_spend_of_the_same_total_is_not() -> None:
    agent = Agent(LoopGuard(max_spend_rate="1.00/min"), step=30.0)
    for i in range(100):  # $30 in all, but never more than $0.60 in any minute
        agent.llm(f"answer {i}", cost="0.30")


# ---------------------------------------------------------------- caps and duration
@pytest.mark.parametrize(
    ("guard", "detector", "allowed"),
    [
        (LoopGuard(max_steps=5, max_repeats=None), "max_steps", 5),
        (LoopGuard(max_llm_calls=2, max_repeats=None), "max_llm_calls", 4),  # llm, tool, llm, tool, [llm]
        (LoopGuard(max_tool_calls=3, max_repeats=None), "max_tool_calls", 7),
    ],
)
def test_caps_refuse_the_call_over_the_limit(guard: LoopGuard, detector: str, allowed: int) -> None:
    agent = Agent(guard)
    with pytest.raises(LoopDetectedError) as info:
        for i in range(100):
            agent.llm(f"t{i}")
            agent.tool("search", {"q": i})
    assert info.value.detector == detector and agent.state.counts["total"] == allowed
    assert info.value.evidence["call"]["seq"] == allowed + 1


def test_max_duration_counts_from_the_start_of_the_run() -> None:
    agent = Agent(LoopGuard(max_duration="90s"), start=1000.0, step=10.0)
    with pytest.raises(LoopDetectedError) as info:
        for i in range(100):
            agent.tool("search", {"q": i})
    assert info.value.detector == "max_duration" and info.value.evidence["call"]["seq"] == 10
    assert info.value.evidence["limit_s"] == 90.0


# ---------------------------------------------------------------- healthy agents
STRICT = LoopGuard(max_repeats=3, max_oscillation=4, max_same_error=3, max_no_progress=3, max_spend_rate="5/min")


@pytest.mark.parametrize("guard", [LoopGuard(), STRICT], ids=["defaults", "strict"])
def test_healthy_research_agent_is_not_stopped(guard: LoopGuard) -> None:
    agent = Agent(guard)
    queries = itertools.cycle(["otters", "sea otters", "otter diet", "otter habitat", "otter predators"])
    for i in range(190):
        agent.llm(f"turn {i}", cost="0.01")
        agent.tool("search", {"q": f"{next(queries)} {i}"}, Outcome(output_digest=digest(f"r{i}")))
        if i % 5 == 0:  # a few pages fetched twice, well apart: legitimate
            agent.tool("fetch", {"url": f"https://p/{i // 20}"}, Outcome(output_digest=digest(i // 20)))
        if i % 7 == 0:
            agent.tool("read", {"path": f"/{i}"}, _fail(f"no such file /{i}"))  # different messages


@pytest.mark.parametrize("guard", [LoopGuard(), STRICT], ids=["defaults", "strict"])
def test_varied_a_b_c_d_with_legitimate_repeats_under_the_thresholds(guard: LoopGuard) -> None:
    agent = Agent(guard)
    for i in range(100):
        for name in "ABCD":
            agent.tool(name, {"i": i}, Outcome(output_digest=digest((name, i))))
        if i % 2 == 0:  # polled with the same arguments, at most 3 times in any 20 calls
            agent.tool("status", {"job": 7}, Outcome(output_digest=digest(i)))
        if i % 3 == 0:  # fails, then succeeds on the retry: never twice in a row
            agent.tool("flaky", {"i": i}, _fail())
            agent.tool("flaky", {"i": i, "retry": 1}, OK)


def test_long_healthy_run_of_10000_calls_is_not_stopped() -> None:
    agent = Agent(LoopGuard(max_steps=None, max_no_progress=5, max_spend_rate="100/min"))
    for i in range(5000):
        agent.llm(f"turn {i}", cost="0.001")
        agent.tool("search", {"q": i}, Outcome(output_digest=digest(i)))
    assert agent.state.counts == {"total": 10000, "llm": 5000, "tool": 5000}


def test_memory_does_not_grow_with_run_length() -> None:
    agent = Agent(LoopGuard(max_steps=None, max_no_progress=5, max_spend_rate="100/min"), step=1.0)

    def run(n: int) -> None:
        for _ in range(n):
            agent.llm(f"turn {agent.seq}", cost="0.001")
            agent.tool("search", {"q": agent.seq}, Outcome(output_digest=digest(agent.seq)))

    run(500)
    tracemalloc.start()
    run(100)
    early = tracemalloc.get_traced_memory()[0]
    run(4000)
    late = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert late - early < 64 * 1024, (early, late)


# ---------------------------------------------------------------- latching
def test_a_caught_stop_is_latched_and_escalates_past_except_exception() -> None:
    agent = Agent(LoopGuard(max_repeats=2))
    calls = 0
    with pytest.raises(RunStopped) as info:
        while True:  # an agent that swallows every Exception and carries on
            try:
                agent.tool("search", {"q": "same"})
                calls += 1
            except Exception:
                pass
    assert calls == 2
    assert info.value.detector == "max_repeats" and info.value.run_id == "run-1"
    assert not isinstance(info.value, Exception)
    first = agent.state.stopped
    assert isinstance(first, LoopDetectedError) and first.evidence["count"] == 3
    with pytest.raises(RunStopped):  # and again, for any call
        agent.llm("something else")


def test_after_is_a_no_op_once_stopped() -> None:
    state = LoopState(LoopGuard(max_same_error=1), run_id="r")
    a, b = Signature(1, "tool", "x", "d", at=1.0), Signature(2, "tool", "y", "d", at=1.0)
    state.before(a)
    state.before(b)  # two calls in flight at once
    with pytest.raises(LoopDetectedError):
        state.after(a, _fail())
    state.after(b, _fail())  # the other one ends too: no second stop
    assert state.stopped is not None and state.stopped.evidence["calls"][0]["seq"] == 1


def test_concurrent_callers_cannot_overshoot_a_cap() -> None:
    state = LoopState(LoopGuard(max_steps=10, max_repeats=None), run_id="r")
    passed: list[int] = []
    barrier = threading.Barrier(50)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            state.before(Signature(i, "tool", "t", str(i), at=0.0))
            passed.append(i)
        except (LoopDetectedError, RunStopped):
            pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(passed) == 10


# ---------------------------------------------------------------- replay
def _journal(n: int, outcome: Outcome | None = OK) -> list[tuple[Signature, Outcome | None]]:
    return [(Signature(i, "tool", "ping", digest({"host": "h"}), at=float(i)), outcome) for i in range(1, n + 1)]


def test_replay_continues_counting_repeats() -> None:
    state = LoopState(LoopGuard(max_repeats=3), run_id="r").replay(_journal(3))
    with pytest.raises(LoopDetectedError) as info:
        state.before(Signature(4, "tool", "ping", digest({"host": "h"}), at=4.0))
    assert seqs(info.value.evidence["calls"]) == [1, 2, 3]


def test_replay_never_fires_even_past_a_threshold() -> None:
    # Options tightened since the calls were made: replay accepts them, the next live call stops.
    state = LoopState(LoopGuard(max_repeats=2, max_same_error=2, max_steps=3), run_id="r")
    state.replay(_journal(5, _fail()))
    assert state.stopped is None and state.counts["total"] == 5
    with pytest.raises(LoopDetectedError) as info:
        state.before(Signature(6, "tool", "other", "x", at=6.0))
    assert info.value.detector == "max_steps"


def test_replay_continues_the_after_detectors() -> None:
    guard = LoopGuard(max_same_error=3, max_spend_rate="1/min", max_repeats=None)
    failed = Outcome.failure(OSError("down"), cost_usd=Decimal("0.4"))
    state = LoopState(guard, run_id="r").replay(
        [(Signature(i, "tool", "api", str(i), at=float(i)), failed) for i in (1, 2)]
    )
    s3 = Signature(3, "tool", "api", "3", at=3.0)
    state.before(s3)
    with pytest.raises(LoopDetectedError) as info:
        state.after(s3, Outcome(cost_usd=Decimal("0.4")))  # not the same error, but $1.20 in a minute
    assert info.value.detector == "max_spend_rate" and seqs(info.value.evidence["calls"]) == [1, 2, 3]


def test_replay_of_a_call_that_never_ended_counts_it_once() -> None:
    state = LoopState(LoopGuard(max_tool_calls=2), run_id="r").replay(_journal(2, None))
    with pytest.raises(LoopDetectedError):
        state.before(Signature(3, "tool", "x", "y", at=3.0))


def test_duration_starts_at_the_first_call_when_the_start_is_not_given() -> None:
    state = LoopState(LoopGuard(max_duration=60, max_repeats=None), run_id="r")
    state.replay(_journal(1))  # at=1.0
    state.before(Signature(2, "tool", "a", "1", at=61.0))
    with pytest.raises(LoopDetectedError):
        state.before(Signature(3, "tool", "a", "2", at=61.5))


# ---------------------------------------------------------------- the engine link's form
# ---------------------------------------------------------------- options
@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_repeats": 0},
        {"max_steps": -1},
        {"max_steps": 1.5},
        {"max_oscillation": True},
        {"repeat_window": 1},
        {"max_repeats": 20},  # can never fire within the default window of 20
        {"max_duration": "soon"},
        {"max_duration": 0},
        {"max_spend_rate": "lots"},
        {"max_spend_rate": "0/min"},
    ],
)
def test_bad_options_are_user_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UserError):
        LoopGuard(**kwargs)


def test_options_round_trip_through_the_run_record() -> None:
    guard = LoopGuard(max_duration="15m", max_spend_rate="1.00/min", max_no_progress=5)
    stored = json.loads(json.dumps(guard.to_run_options()))
    assert LoopGuard(**stored["loop_guard"]) == guard


def test_defaults() -> None:
    g = LoopGuard()
    assert (g.max_steps, g.max_repeats, g.repeat_window, g.max_same_error, g.max_oscillation) == (1000, 5, 20, 5, 4)
    assert g.max_llm_calls is g.max_tool_calls is g.max_duration is g.max_no_progress is g.max_spend_rate is None
