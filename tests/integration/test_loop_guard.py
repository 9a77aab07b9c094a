"""P2: scripted agents, driven through the real OpenAI SDK, stopped by the right detector."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from budget_helpers import subprocess_env

import wflo
from wflo import _config
from wflo.testing import LLMServer, Reply, ToolCall


@wflo.tool
def search(q: str) -> str:
    """Search the web."""
    return f"results for {q}"


@wflo.tool
def fetch(url: str) -> str:
    """Fetch a page."""
    return f"page {url}"


@wflo.tool
def flaky_api(x: int) -> str:
    """An API that always fails the same way."""
    raise ConnectionError("upstream 503")


TOOLS = {"search": search, "fetch": fetch, "flaky_api": flaky_api}


def agent_loop(base_url: str, turns: int, *, swallow: bool = False) -> str:
    """A plain tool-calling agent: unchanged SDK code, as users write it."""
    client = openai.OpenAI(base_url=base_url, api_key="t", max_retries=0)
    messages: list[dict] = [{"role": "user", "content": "research otters"}]
    schemas = [t.openai_schema() for t in TOOLS.values()]
    for _ in range(turns):
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=schemas, max_tokens=100)
        msg = reply.choices[0].message
        if not msg.tool_calls:
            messages.append({"role": "assistant", "content": msg.content})
            continue
        messages.append(
            {"role": "assistant", "content": None, "tool_calls": [tc.model_dump() for tc in msg.tool_calls]}
        )
        for tc in msg.tool_calls:
            try:
                result = TOOLS[tc.function.name](**json.loads(tc.function.arguments))
            except ConnectionError as exc:
                result = f"error: {exc}"
            except Exception:
                if not swallow:
                    raise
                result = "error"
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": result})
    return "done"


def _tool(name: str, **args: object) -> Reply:
    return Reply(tool_calls=[ToolCall(name, args)])


def _run(
    guard: wflo.LoopGuard, llm: LLMServer, turns: int, run_id: str, *, swallow: bool = False
) -> wflo.LoopDetectedError | None:
    @wflo.workflow(name=f"agent-{run_id}", guards=guard, budget=wflo.Budget(usd="5"))
    def agent() -> str:
        return agent_loop(llm.openai_url, turns, swallow=swallow)

    try:
        agent.options(id=run_id).run()
    except wflo.LoopDetectedError as exc:
        return exc
    return None


def _stop_event(run_id: str) -> dict:
    events = [e for e in _config.get_store().events(run_id) if e.type == "loop.stopped"]
    assert len(events) == 1
    return events[0].data


def test_repeating_the_same_tool_call_is_stopped_with_evidence(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda r: _tool("search", q="otters")
    err = _run(wflo.LoopGuard(max_repeats=3), llm, 50, "rep")
    assert err is not None and err.detector == "max_repeats"
    ev = err.evidence
    assert ev["name"] == "search" and ev["count"] == 4 and len(ev["calls"]) == 3
    run = _config.get_store().get_run("rep")
    assert run.status == "stopped" and run.error["type"] == "LoopDetectedError"
    assert _stop_event("rep")["detector"] == "max_repeats"
    assert llm.request_count == 4  # stopped before the 4th search ran; the 5th LLM call never happened
    ran = [e for e in _config.get_store().events("rep") if e.type == "call.completed" and e.data["kind"] == "tool"]
    assert len(ran) == 3


def test_oscillation_between_two_tools(configured: str, llm: LLMServer) -> None:
    cycle = itertools.cycle([_tool("search", q="a"), _tool("fetch", url="b")])
    llm.responder = lambda r: next(cycle)
    err = _run(wflo.LoopGuard(max_repeats=None, max_oscillation=3), llm, 50, "osc")
    assert err is not None and err.detector == "max_oscillation"
    assert err.evidence["period"] == 2
    assert {c["name"] for c in err.evidence["cycle"]} >= {"search", "fetch"} or err.evidence["cycle"]


def test_same_error_in_a_row(configured: str, llm: LLMServer) -> None:
    counter = itertools.count()
    llm.responder = lambda r: _tool("flaky_api", x=next(counter))  # different args, same failure
    err = _run(wflo.LoopGuard(max_same_error=3), llm, 50, "err")
    assert err is not None and err.detector == "max_same_error"
    assert "upstream 503" in err.evidence["error"] and err.evidence["count"] == 3


def test_same_answer_each_turn_is_no_progress(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda r: Reply("I will look into it.")
    err = _run(wflo.LoopGuard(max_no_progress=3), llm, 50, "noprog")
    assert err is not None and err.detector == "max_no_progress"
    assert err.evidence["count"] == 3


def test_spending_fast_is_stopped(configured: str, llm: LLMServer) -> None:
    counter = itertools.count()
    llm.responder = lambda r: Reply(f"answer {next(counter)} " + "w " * 90, input_tokens=20_000)
    err = _run(wflo.LoopGuard(max_spend_rate="0.01/min"), llm, 100, "spend")
    assert err is not None and err.detector == "max_spend_rate"
    assert float(err.evidence["spent"]) > 0.01


def test_caps_on_llm_calls(configured: str, llm: LLMServer) -> None:
    counter = itertools.count()
    llm.responder = lambda r: Reply(f"thought {next(counter)}")
    err = _run(wflo.LoopGuard(max_llm_calls=4), llm, 50, "cap")
    assert err is not None and err.detector == "max_llm_calls" and llm.request_count == 4


def test_healthy_agent_with_legitimate_repeats_is_not_stopped(configured: str, llm: LLMServer) -> None:
    queries = itertools.cycle(["otters", "sea otters", "otter diet", "otter habitat", "otter predators"])
    urls = itertools.cycle(["https://a", "https://b"])  # each page fetched twice: legitimate
    script = itertools.cycle(
        [lambda: _tool("search", q=next(queries)), lambda: _tool("fetch", url=next(urls)), lambda: Reply("noted")]
    )
    llm.responder = lambda r: next(script)()
    assert (
        _run(
            wflo.LoopGuard(max_repeats=3, max_oscillation=4, max_same_error=3, max_no_progress=None), llm, 12, "healthy"
        )
        is None
    )
    assert _config.get_store().get_run("healthy").status == "succeeded"


def test_stop_is_latched_even_if_agent_swallows_it(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda r: _tool("search", q="same")
    err = _run(wflo.LoopGuard(max_repeats=2), llm, 20, "latch", swallow=True)
    assert err is not None and err.detector == "max_repeats"
    # The agent caught the stop and looped on; its next guarded call (the LLM) raised again.
    assert llm.request_count == 3
    assert _config.get_store().get_run("latch").status == "stopped"


def test_defaults_cap_runaway_without_configuration(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda r: _tool("search", q="forever")

    @wflo.workflow(name="defaults")
    def agent() -> str:
        return agent_loop(llm.openai_url, 1000)

    with pytest.raises(wflo.LoopDetectedError) as info:
        agent.options(id="dflt").run()
    assert info.value.detector == "max_repeats" and llm.request_count <= 6


def test_spend_rate_survives_a_kill_and_resume(configured: str, llm: LLMServer, tmp_path: Path) -> None:
    # ~$0.003 a call against 0.008/min: two calls, SIGKILL, resume; the third is over the rate.
    # (A resumed run that forgot the spend before the crash would have made five.)
    llm.responder = lambda r: Reply("an answer", input_tokens=20_000)
    code = "import llmapp, sys; print(llmapp.spend_rate.options(id='ratekill').run(sys.argv[1]))"
    env = subprocess_env(configured, llm)
    marker = str(tmp_path / "died-once")
    first = subprocess.run([sys.executable, "-c", code, marker], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == -9, first.stderr  # SIGKILL after two finished calls
    assert llm.request_count == 2
    second = subprocess.run([sys.executable, "-c", code, marker], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "LoopDetectedError" in second.stderr, second.stderr
    assert llm.request_count == 3
    stop = _stop_event("ratekill")
    assert stop["detector"] == "max_spend_rate" and stop["evidence"]["count"] == 3
    assert Decimal(stop["evidence"]["spent"]) > Decimal("0.008")
    assert _config.get_store().get_run("ratekill").status == "stopped"
