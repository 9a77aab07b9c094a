"""Resilience policies at the call boundary, through the real openai SDK: circuit breakers per
model, rate limits shared by processes on one store, and model fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

import wflo
from rate_waits import store_work_behind_waits
from wflo import UserError, _config
from wflo.testing import LLMServer, Reply

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _no_policies() -> Iterator[None]:
    wflo.policies.clear()
    yield
    wflo.policies.clear()


def _ask(base_url: str, model: str = "gpt-4o-mini") -> str:
    with openai.OpenAI(base_url=base_url, api_key="t", max_retries=0) as client:  # closed: no socket left behind
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    return reply.choices[0].message.content or ""


def test_breaker_opens_refuses_before_sending_then_probes_once(store_url: str, llm: LLMServer) -> None:
    wflo.configure(database=store_url)
    wflo.policies.breaker("model:gpt-4o-mini", failures=2, reset="1s")
    llm.responder = lambda r: Reply(error=503)

    @wflo.workflow(name="breaker-flow", guards=wflo.LoopGuard(max_same_error=None, max_repeats=None))
    def flow() -> list[str]:
        seen = []
        for _ in range(4):
            try:
                seen.append(_ask(llm.openai_url))
            except wflo.errors.CircuitOpenError:
                seen.append("refused")
            except openai.APIStatusError as exc:
                seen.append(str(exc.status_code))
        time.sleep(1.1)  # the circuit admits one probe after reset
        llm.responder = lambda r: Reply("back")
        seen.append(_ask(llm.openai_url))
        seen.append(_ask(llm.openai_url))
        return seen

    assert flow.options(id="brk").run() == ["503", "503", "refused", "refused", "back", "back"]
    assert llm.request_count == 4, "an open circuit let a request through"
    events = list(_config.get_store().events("brk"))
    moves = [(e.data["from"], e.data["to"]) for e in events if e.type == "breaker.transition"]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    failed = [e.data for e in events if e.type == "call.failed" and e.data["kind"] == "llm"]
    assert [f["error"]["type"] for f in failed] == ["CircuitOpenError", "CircuitOpenError"]


def test_breaker_on_a_tool_counts_only_retryable_errors(store_url: str) -> None:
    wflo.configure(database=store_url)
    wflo.policies.breaker("tool:*", failures=2, reset="1h")
    calls = []

    @wflo.tool
    def flaky(kind: str) -> str:
        calls.append(kind)
        raise ConnectionError("down") if kind == "net" else ValueError("bad input")

    @wflo.workflow(name="tool-breaker", guards=wflo.LoopGuard(max_same_error=None, max_repeats=None))
    def flow() -> list[str]:
        out = []
        for kind in ("bad", "bad", "bad", "net", "net", "net"):
            try:
                flaky(kind)
            except Exception as exc:
                out.append(type(exc).__name__)
        return out

    # ValueErrors are the caller's mistakes, not an outage: they never open the circuit.
    assert flow.run() == ["ValueError"] * 3 + ["ConnectionError", "ConnectionError", "CircuitOpenError"]
    assert calls == ["bad", "bad", "bad", "net", "net"]


def test_rate_limit_holds_across_three_processes(store_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": store_url, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])})
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "ratelimit_app.py"), f"rl-{i}", "10"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(int(out.strip().splitlines()[-1]))
    elapsed = time.monotonic() - t0
    # 12 requests a minute between them: a full bucket of 12, refilled at 0.2/s while they ran.
    # Each process alone would have let all 10 of its calls through (30 in all).
    assert 12 <= sum(results) <= 12 + int(elapsed * 0.2) + 1, (results, elapsed)


def test_rate_limit_waits_for_its_turn(store_url: str) -> None:
    wflo.configure(database=store_url)
    wflo.policies.rate_limit("step:tick", requests_per_minute=120, max_wait="10s")  # 2 a second after a burst of 120

    @wflo.step
    def tick(i: int) -> int:
        return i

    @wflo.workflow(name="ticks")
    def flow() -> int:
        return sum(tick(i) for i in range(123))

    t0 = time.monotonic()
    assert flow.options(id="ticks").run() == sum(range(123))
    assert time.monotonic() - t0 > 1.0, "the three calls past the burst did not wait"
    waits = [e.data["rate_limit"] for e in _config.get_store().events("ticks") if "rate_limit" in e.data]
    assert len(waits) >= 1 and waits[0][0]["target"] == "step:tick"


def test_fallback_to_the_next_model_each_attempt_priced(store_url: str, llm: LLMServer) -> None:
    wflo.configure(database=store_url)
    llm.responder = lambda r: Reply(error=429) if r.model == "gpt-4o" else Reply("answer from mini", output_tokens=3)

    @wflo.workflow(name="fallback-flow")
    @wflo.integrations.fallback("gpt-4o", "gpt-4o-mini")
    def flow() -> str:
        return _ask(llm.openai_url, model="gpt-4o")

    assert flow.options(id="fb").run() == "answer from mini"
    assert [r.model for r in llm.requests] == ["gpt-4o", "gpt-4o-mini"]
    calls = [e.data for e in _config.get_store().events("fb") if e.type == "call.completed" and e.data["kind"] == "llm"]
    assert [c["name"] for c in calls] == ["gpt-4o", "gpt-4o-mini"]
    assert calls[1]["fallback_from"] == "gpt-4o"
    assert all("cost_usd" in c for c in calls)

    # Outside the fallback block, the same failure reaches the agent.
    @wflo.workflow(name="no-fallback")
    def plain() -> str:
        return _ask(llm.openai_url, model="gpt-4o")

    with pytest.raises(openai.RateLimitError):
        plain.run()


def test_fallback_after_a_crash_replays_both_attempts(store_url: str, llm: LLMServer) -> None:
    wflo.configure(database=store_url)
    llm.responder = lambda r: Reply(error=500) if r.model == "gpt-4o" else Reply("mini")
    crash = {"armed": True}

    @wflo.step
    def after() -> None:
        if crash["armed"]:
            crash["armed"] = False
            raise KeyboardInterrupt("simulated crash")

    @wflo.workflow(name="fallback-crash")
    def flow() -> str:
        with wflo.integrations.fallback("gpt-4o", "gpt-4o-mini"):
            text = _ask(llm.openai_url, model="gpt-4o")
        after()
        return text

    with pytest.raises(KeyboardInterrupt):
        flow.options(id="fbc").run()
    assert flow.options(id="fbc").run() == "mini"
    assert llm.request_count == 2, "a resumed run sent a finished attempt again"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: wflo.integrations.fallback("gpt-4o"), "two or more different model names"),
        (lambda: wflo.integrations.fallback("gpt-4o", "gpt-4o"), "two or more different model names"),
        (lambda: wflo.policies.breaker("gpt-4o"), "KIND:NAME"),
        (lambda: wflo.policies.breaker("model:x", failures=0), "failure_threshold"),
        (lambda: wflo.policies.rate_limit("tool:x"), "requests_per_minute=, tokens_per_minute="),
        (lambda: wflo.policies.rate_limit("tool:x", requests_per_minute=-1), "positive number"),
    ],
)
def test_bad_policy_settings_are_user_errors(build: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build()  # type: ignore[operator]


def test_model_retry_policy_each_attempt_journaled_and_replayed(store_url: str, llm: LLMServer) -> None:
    wflo.configure(database=store_url)
    wflo.policies.retry("model:gpt-4o-mini", wflo.RetryPolicy(attempts=3, backoff=0.01))
    llm.script(Reply(error=503), Reply(error=429, retry_after=0.3), Reply("third time"))
    crash = {"armed": True}

    @wflo.step
    def after() -> None:
        if crash["armed"]:
            crash["armed"] = False
            raise KeyboardInterrupt("simulated crash")

    @wflo.workflow(name="model-retry")
    def flow() -> str:
        text = _ask(llm.openai_url)
        after()
        return text

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        flow.options(id="mr").run()
    assert time.monotonic() - t0 >= 0.3, "Retry-After was not honoured"
    assert llm.request_count == 3
    assert flow.options(id="mr").run() == "third time"
    assert llm.request_count == 3, "a resumed run sent an attempt again"
    calls = [e.data for e in _config.get_store().events("mr") if e.type == "call.completed" and e.data["kind"] == "llm"]
    assert [c.get("next", {}).get("retry") for c in calls] == [2, 3, None]
    assert calls[1]["next"]["delay_s"] >= 0.3


def test_model_retry_gives_up_then_falls_back(store_url: str, llm: LLMServer) -> None:
    wflo.configure(database=store_url)
    wflo.policies.retry("provider:*", wflo.RetryPolicy(attempts=2, backoff=0.01))
    llm.responder = lambda r: Reply(error=500) if r.model == "gpt-4o" else Reply("mini")

    @wflo.workflow(name="retry-then-fallback")
    def flow() -> str:
        with wflo.integrations.fallback("gpt-4o", "gpt-4o-mini"):
            return _ask(llm.openai_url, model="gpt-4o")

    assert flow.run() == "mini"
    assert [r.model for r in llm.requests] == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]


def test_model_timeout_policy(store_url: str, llm: LLMServer) -> None:
    wflo.configure(database=store_url)
    wflo.policies.timeout("model:gpt-4o-mini", "300ms")
    llm.responder = lambda r: Reply("slow", delay=3)

    @wflo.workflow(name="model-timeout")
    def flow() -> str:
        return _ask(llm.openai_url)

    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        flow.run()
    assert time.monotonic() - t0 < 2.5


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: wflo.policies.retry("tool:search", wflo.RetryPolicy()), "for LLM calls"),
        (lambda: wflo.policies.retry("model:x", 3), "takes a wflo.RetryPolicy"),
        (lambda: wflo.policies.timeout("step:x", "1s"), "for LLM calls"),
        (lambda: wflo.policies.timeout("model:x", "soon"), "timeout must be a duration"),
    ],
)
def test_bad_model_policies_are_user_errors(build: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build()  # type: ignore[operator]


def test_an_async_llm_call_waits_for_its_rate_limit_turn_on_its_loop(store_url: str, llm: LLMServer) -> None:
    # An async client's call that waits for a model's rate-limit turn waited on a store thread,
    # which every async run of the process shares (two on SQLite): another run's store work then
    # waited behind it. The wait is now made on the call's event loop.
    wflo.configure(database=store_url)
    limit = wflo.policies.rate_limit("model:gpt-4o-mini", requests_per_minute=30, max_wait="2.5s")
    llm.script(*[Reply("ok")] * (_config.get_store()._offloader().threads + 2))
    try:

        @wflo.workflow(name="rl.llm")
        async def ask() -> str:
            async with openai.AsyncOpenAI(base_url=llm.openai_url, api_key="x", max_retries=0) as client:
                try:
                    r = await client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                    )
                except wflo.errors.RateLimitedError:
                    return "refused"
            return str(r.choices[0].message.content)

        results, took = store_work_behind_waits(limit, ask, "rl")
    finally:
        wflo.policies.clear()
    assert took < 0.8, f"a run's store work waited {took:.2f} s behind async LLM calls' rate-limit waits"
    assert results.count("ok") >= 1 and set(results) <= {"ok", "refused"}, results
