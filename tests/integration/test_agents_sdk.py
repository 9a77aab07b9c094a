"""The OpenAI Agents SDK under wflo.wrap: the real openai-agents package against wflo.testing's LLM
server (no mocks, no internet: tracing off, models pointed at the scripted server)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

agents = pytest.importorskip("agents")
import httpx  # noqa: E402
from openai import AsyncOpenAI, DefaultAsyncHttpxClient  # noqa: E402

import wflo  # noqa: E402
from wflo import _config  # noqa: E402
from wflo.approvals import approvals  # noqa: E402
from wflo.cost._api import ledger  # noqa: E402
from wflo.engine import Worker  # noqa: E402
from wflo.testing import LLMServer, Reply, ToolCall  # noqa: E402

agents.set_tracing_disabled(True)  # the SDK's tracing would export to OpenAI's servers

EFFECTS: list[str] = []


def _close_thread_loop() -> None:
    """Close the event loop run_sync (like the SDK's own) leaves this thread (``asyncio.run``
    would drop it unclosed)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        return  # no loop left behind
    if not loop.is_running():
        loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture(autouse=True)
def _close_run_sync_loop() -> Iterator[None]:
    yield
    _close_thread_loop()


@agents.function_tool
def search(query: str) -> str:
    """Search the web for a query."""
    EFFECTS.append(f"search {query}")
    return f"Sea otters use rocks as tools ({query})."


@agents.function_tool(needs_approval=True)
def send_email(to: str, body: str) -> str:
    """Send an email (a human approves each one)."""
    EFFECTS.append(f"email {to}")
    return f"sent to {to}"


def _agent(llm: LLMServer, model: str = "gpt-4o-mini", **settings: Any) -> Any:
    EFFECTS.clear()
    # No kept-alive connections: each asyncio.run() has its own loop, and a pooled connection
    # would outlive the loop it was opened on.
    http = DefaultAsyncHttpxClient(limits=httpx.Limits(max_keepalive_connections=0))
    client = AsyncOpenAI(base_url=llm.openai_url, api_key="test", max_retries=0, http_client=http)
    return agents.Agent(
        name="researcher", instructions="Answer questions; email summaries.", tools=[search, send_email],
        model=agents.OpenAIChatCompletionsModel(model=model, openai_client=client),
        model_settings=agents.ModelSettings(**settings),
    )  # fmt: skip


def _events(run_id: str, kind: str) -> list[dict[str, Any]]:
    return [
        e.data
        for e in _config.get_store().events(run_id)
        if e.type in ("call.completed", "call.failed") and e.data["kind"] == kind
    ]


def test_tokens_and_cost_recorded_per_call(configured: str, llm: LLMServer) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"query": "otters"})], input_tokens=1200, output_tokens=7),
        Reply("Otters use rocks.", input_tokens=1500, output_tokens=4),
    )
    agent = wflo.wrap(_agent(llm), budget=wflo.Budget(usd="1"), name="agents-cost")
    result = asyncio.run(agent.options(id="agents-cost").run("What tools do otters use?"))
    assert result.final_output == "Otters use rocks."  # the SDK's own RunResult
    assert agent.name == "researcher"  # attribute passthrough
    calls = _events("agents-cost", "llm")
    assert [(c["usage"]["input_tokens"], c["usage"]["output_tokens"]) for c in calls] == [(1200, 7), (1500, 4)]
    for c in calls:
        usage = genai_prices.Usage(input_tokens=c["usage"]["input_tokens"], output_tokens=c["usage"]["output_tokens"])
        price = genai_prices.calc_price(usage, model_ref="gpt-4o-mini", provider_id="openai")
        assert Decimal(c["cost_usd"]) == Decimal(price.total_price)
    assert ledger().scope_usage("run:agents-cost").spent == sum(Decimal(c["cost_usd"]) for c in calls)
    (tool_call,) = _events("agents-cost", "tool")
    assert tool_call["name"] == "search" and "Sea otters" in tool_call["output"]
    assert EFFECTS == ["search otters"]


def test_run_sync_and_run_streamed(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("sync answer"), Reply(tool_calls=[ToolCall("search", {"query": "s"})]), Reply("streamed answer"))
    agent = wflo.wrap(_agent(llm), name="agents-modes")
    assert agent.options(id="agents-sync").run_sync("hi").final_output == "sync answer"
    _close_thread_loop()

    async def stream() -> list[Any]:
        return [event async for event in agent.options(id="agents-stream").run_streamed("hi")]

    events = asyncio.run(stream())
    assert any(getattr(e, "type", "") == "run_item_stream_event" for e in events)
    assert _config.get_store().get_run("agents-stream").output == "streamed answer"
    assert [c["name"] for c in _events("agents-stream", "tool")] == ["search"]


def test_run_sync_twice_with_one_client_kept_between_runs(configured: str, llm: LLMServer) -> None:
    """``run_sync`` twice with one client kept between runs (as the SDK's default client is), as
    ``Runner.run_sync`` allows. Each ``run_sync`` ran on a new event loop
    that ``asyncio.run`` closed afterwards, so the second found the client's kept-alive connection
    bound to a closed loop: ``RuntimeError: Event loop is closed``. It now runs on the thread's
    own loop, kept open between calls, as ``Runner.run_sync`` does."""
    llm.script(Reply("first"), Reply("second"))
    client = AsyncOpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)  # keeps connections alive
    agent = agents.Agent(
        name="plain", model=agents.OpenAIChatCompletionsModel(model="gpt-4o-mini", openai_client=client)
    )
    wrapped = wflo.wrap(agent, name="agents-sync-twice")
    assert wrapped.run_sync("one").final_output == "first"
    assert wrapped.run_sync("two").final_output == "second"
    assert llm.request_count == 2
    loop = asyncio.get_event_loop_policy().get_event_loop()
    loop.run_until_complete(client.close())


def test_budget_for_two_calls_stops_the_third_before_sending(configured: str, llm: LLMServer) -> None:
    # Input free, output $1/MTok: each call reserves exactly its cap (1000 tokens, $0.001) and
    # settles the same; $0.00201 fits two calls and leaves less than 16 output tokens for a third.
    wflo.cost.prices.set("wflo-agents-model", input_per_mtok="0", output_per_mtok="1")
    for i in range(3):
        llm.script(Reply(tool_calls=[ToolCall("search", {"query": f"q{i}"})], output_tokens=1000))
    agent = wflo.wrap(_agent(llm, model="wflo-agents-model", max_tokens=1000), budget=wflo.Budget(usd="0.00201"))
    with pytest.raises(wflo.BudgetExceededError) as info:
        agent.options(id="agents-budget").run_sync("go")
    assert llm.request_count == 2  # the third call never left
    assert info.value.scope == "run:agents-budget"
    usage = ledger().scope_usage("run:agents-budget")
    assert usage.spent == Decimal("0.002") and usage.reserved == 0


def test_repeated_tool_call_stopped_by_loop_guard(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda request: Reply(tool_calls=[ToolCall("search", {"query": "otters"})])
    agent = wflo.wrap(_agent(llm), guards=wflo.LoopGuard(max_repeats=3))
    with pytest.raises(wflo.LoopDetectedError) as info:  # propagated through the SDK, not swallowed
        asyncio.run(agent.options(id="agents-loop").run("go", max_turns=50))
    assert info.value.detector == "max_repeats" and info.value.evidence["count"] == 4
    assert EFFECTS == ["search otters"] * 3
    assert llm.request_count == 4
    assert _config.get_store().get_run("agents-loop").status == "stopped"


def test_needs_approval_tool_waits_durably_then_resumes(configured: str, llm: LLMServer) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"query": "otters"})]),
        Reply(tool_calls=[ToolCall("send_email", {"to": "boss@corp.example", "body": "rocks"})]),
        Reply("Emailed the summary."),
    )
    agent = wflo.wrap(_agent(llm), name="agents-approval")
    handle = agent.options(id="agents-approval").start("Research otters and email the boss.")
    Worker().run(max_runs=1, idle_timeout=1)
    assert handle.status() == "waiting"  # a durable wait, not an in-memory interruption
    assert EFFECTS == ["search otters"] and llm.request_count == 2
    (request,) = approvals.list(run_id=handle.id)
    assert request.action == {"tool": "send_email", "args": [], "kwargs": {"to": "boss@corp.example", "body": "rocks"}}
    approvals.approve(request.id, principal="user:boss", action_hash=request.action_hash)
    Worker().run(max_runs=1, idle_timeout=1)
    assert handle.result(timeout=30) == "Emailed the summary."
    assert EFFECTS == ["search otters", "email boss@corp.example"]  # search replayed, not re-run
    assert llm.request_count == 3  # finished LLM calls replayed, not re-sent


def test_rejected_approval_stops_the_run(configured: str, llm: LLMServer) -> None:
    llm.script(Reply(tool_calls=[ToolCall("send_email", {"to": "all@corp.example", "body": "spam"})]))
    agent = wflo.wrap(_agent(llm), name="agents-reject")
    handle = agent.options(id="agents-reject").start("Email everyone.")
    Worker().run(max_runs=1, idle_timeout=1)
    (request,) = approvals.list(run_id=handle.id)
    approvals.reject(request.id, reason="no mass email", principal="user:boss")
    Worker().run(max_runs=1, idle_timeout=1)
    with pytest.raises(wflo.RunFailedError) as info:
        handle.result(timeout=30)
    assert info.value.error["type"] == "ApprovalRejected" and "no mass email" in info.value.error["message"]
    assert EFFECTS == []


CRASH_APP = """
import asyncio, os, signal, sys
import agents
from openai import AsyncOpenAI
import wflo

agents.set_tracing_disabled(True)
marker, effects = sys.argv[1], sys.argv[2]

@agents.function_tool
def search(query: str) -> str:
    '''Search the web for a query.'''
    with open(effects, "a") as fh:
        fh.write(query + "\\n")
    if query == "second" and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # mid-run: two LLM calls and one tool call finished
    return "result for " + query

client = AsyncOpenAI(base_url=os.environ["LLM_URL"], api_key="test", max_retries=0)
model = agents.OpenAIChatCompletionsModel(model="gpt-4o-mini", openai_client=client)
agent = wflo.wrap(agents.Agent(name="researcher", tools=[search], model=model), name="agents-crash", budget=wflo.Budget(usd="1"))
print(asyncio.run(agent.options(id="agents-crash").run("Research otters")).final_output)
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_resends_no_finished_call(configured: str, llm: LLMServer, tmp_path: Path) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"query": "first"})]),
        Reply(tool_calls=[ToolCall("search", {"query": "second"})]),
        Reply("Otters use rocks."),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({
        "WFLO_DATABASE_URL": configured, "LLM_URL": llm.openai_url, "OPENAI_API_KEY": "test",
        "PYTHONPATH": os.pathsep.join(sys.path),
    })  # fmt: skip
    marker, effects = tmp_path / "died", tmp_path / "effects"
    cmd = [sys.executable, "-c", CRASH_APP, str(marker), str(effects)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == -9, first.stderr
    assert llm.request_count == 2
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines()[-1] == "Otters use rocks."
    assert llm.request_count == 3  # the two finished LLM calls were replayed, not re-sent
    assert effects.read_text().split() == ["first", "second", "second"]
    assert len(_events("agents-crash", "llm")) == 3
