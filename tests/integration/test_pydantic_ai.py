"""wflo.wrap on a real pydantic-ai agent (OpenAIChatModel → openai SDK → wflo.testing's server)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

import genai_prices
import httpx2
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import wflo
from wflo import _config
from wflo.approvals import approvals
from wflo.cost._api import ledger
from wflo.integrations.pydantic_ai import WrappedAgent
from wflo.testing import LLMServer, Reply, ToolCall

wrap = wflo.wrap


@pytest.fixture(autouse=True)
def _close_run_sync_loop() -> Iterator[None]:
    """run_sync (like pydantic-ai's own) leaves this thread an event loop: close it after each test."""
    yield
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        return  # no loop left behind
    if not loop.is_running():
        loop.close()
    asyncio.set_event_loop(None)


executed: list[tuple[str, dict[str, Any]]] = []


def build(llm: LLMServer, *, max_tokens: int | None = None) -> Agent[None, str]:
    executed.clear()
    # No kept-alive connections: the test leaves no socket open when its event loop goes.
    http = httpx2.AsyncClient(limits=httpx2.Limits(max_keepalive_connections=0))
    provider = OpenAIProvider(base_url=llm.openai_url, api_key="test", http_client=http)
    settings: Any = {"max_tokens": max_tokens} if max_tokens else None
    agent: Agent[None, str] = Agent(OpenAIChatModel("gpt-4o-mini", provider=provider), name="researcher",
                                    model_settings=settings)  # fmt: skip

    @agent.tool_plain
    def search(query: str) -> str:
        """Search the web for a query."""
        executed.append(("search", {"query": query}))
        return f"results for {query}"

    @agent.tool_plain
    def send_email(to: str, body: str) -> str:
        """Send an email."""
        executed.append(("send_email", {"to": to, "body": body}))
        return f"sent to {to}"

    return agent


def _calls(run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [
        e.data
        for e in _config.get_store().events(run_id)
        if e.type in ("call.completed", "call.failed") and (kind is None or e.data["kind"] == kind)
    ]


def test_wrap_unknown_object_is_a_clear_error() -> None:
    with pytest.raises(wflo.UserError, match=r"supports: .*pydantic-ai"):
        wrap(object())


def test_resuming_elsewhere_names_a_command_that_exists(configured: str, llm: LLMServer) -> None:
    """What `wflo runs resume` (or a worker) hears for a wrapped agent's run: it named `wflo resume`,
    a command that does not exist."""
    agent = wrap(build(llm))
    with pytest.raises(wflo.UserError, match=r"run again with the same run_id.*`wflo runs resume`"):
        asyncio.run(agent._body({}))
    # And neither gets that far: a worker does not claim such a run, wflo.resume refuses it first
    # (both executed it without its call, which failed the run for good).
    from wflo.engine import Worker

    assert agent.workflow.name not in Worker()._names()
    store = _config.get_store()
    store.create_run(run_id="pa-left", workflow=agent.workflow.name, input={"args": [], "kwargs": {}})
    with pytest.raises(wflo.UserError, match="cannot be resumed here"):
        wflo.resume("pa-left")
    assert store.get_run("pa-left").status != "failed"


def test_tokens_and_cost_per_call_equal_server_usage(configured: str, llm: LLMServer) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"query": "otters"})], input_tokens=1200, output_tokens=7),
        Reply("Otters use rocks.", input_tokens=1500, output_tokens=3),
    )
    agent = wrap(build(llm), budget=wflo.Budget(usd="1"))
    assert isinstance(agent, WrappedAgent) and agent.name == "researcher"  # attribute passthrough
    result = agent.run_sync("What do otters use?", run_id="pa-cost")
    assert result.output == "Otters use rocks."
    llm_calls = _calls("pa-cost", "llm")
    assert [(c["usage"]["input_tokens"], c["usage"]["output_tokens"]) for c in llm_calls] == [(1200, 7), (1500, 3)]
    for call, (inp, outp) in zip(llm_calls, [(1200, 7), (1500, 3)], strict=True):
        price = genai_prices.calc_price(genai_prices.Usage(input_tokens=inp, output_tokens=outp),
                                        model_ref="gpt-4o-mini", provider_id="openai")  # fmt: skip
        assert Decimal(call["cost_usd"]) == Decimal(price.total_price)
    (tool_call,) = _calls("pa-cost", "tool")
    assert tool_call["name"] == "search" and tool_call["output"] == "results for otters"
    assert ledger().scope_usage("run:pa-cost").spent == sum(Decimal(c["cost_usd"]) for c in llm_calls)
    assert executed == [("search", {"query": "otters"})]


def test_async_run(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("async answer"))
    agent = wrap(build(llm))
    result = asyncio.run(agent.run("hi", run_id="pa-async"))
    assert result.output == "async answer"
    assert wflo.RunHandle("pa-async").status() == "succeeded" and len(_calls("pa-async", "llm")) == 1


def test_run_stream_events_is_one_guarded_run(configured: str, llm: LLMServer) -> None:
    """``run_stream_events`` on the wrapped agent passed through to the agent: no wflo run, so the
    wrap's budget, loop guard and journal did not apply (the streamed calls went out unguarded,
    past a budget too small for any of them). It is now one wflo run, streaming its events."""
    from pydantic_ai import AgentRunResultEvent

    llm.script(Reply(tool_calls=[ToolCall("search", {"query": "otters"})]), Reply("Otters use rocks."))
    agent = wrap(build(llm, max_tokens=200), budget=wflo.Budget(usd="1"))

    async def events(wrapped: Any, run_id: str) -> list[Any]:
        async with wrapped.run_stream_events("What do otters use?", run_id=run_id) as stream:
            return [event async for event in stream]

    seen = asyncio.run(events(agent, "pa-events"))
    assert isinstance(seen[-1], AgentRunResultEvent) and seen[-1].result.output == "Otters use rocks."
    assert len(seen) > 2  # the model's streamed parts and the tool's events came through
    assert all(r.body.get("stream") is True for r in llm.requests)  # streamed requests
    assert [c["kind"] for c in _calls("pa-events")] == ["llm", "tool", "llm"]
    assert wflo.RunHandle("pa-events").status() == "succeeded"

    llm.reset()
    tiny = wrap(build(llm, max_tokens=200), budget=wflo.Budget(usd="0.0000001"))
    with pytest.raises(wflo.BudgetExceededError):
        asyncio.run(events(tiny, "pa-events-tiny"))
    assert llm.request_count == 0  # refused before it was sent


def test_budget_allows_two_calls_and_refuses_the_third_before_sending(configured: str, llm: LLMServer) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"query": "a"})], input_tokens=10, output_tokens=1000),
        Reply(tool_calls=[ToolCall("search", {"query": "b"})], input_tokens=10, output_tokens=1000),
        Reply("never sent", input_tokens=10, output_tokens=1000),
    )
    agent = wrap(build(llm, max_tokens=1000), budget=wflo.Budget(usd="0.00121"))
    with pytest.raises(wflo.BudgetExceededError) as info:
        agent.run_sync("go", run_id="pa-budget")
    assert llm.request_count == 2
    assert info.value.scope == "run:pa-budget"
    usage = ledger().scope_usage("run:pa-budget")
    assert usage.spent <= Decimal("0.00121") and usage.reserved == 0


def test_repeated_tool_call_stopped_by_loop_guard(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda request: Reply(tool_calls=[ToolCall("search", {"query": "same"})])
    agent = wrap(build(llm), guards=wflo.LoopGuard(max_repeats=3))
    with pytest.raises(wflo.LoopDetectedError) as info:
        agent.run_sync("loop", run_id="pa-loop")
    assert info.value.detector == "max_repeats"
    assert executed == [("search", {"query": "same"})] * 3
    assert wflo.RunHandle("pa-loop").status() == "stopped"


def test_tool_approval_pauses_then_resumes(configured: str, llm: LLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:agent-owner")
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=0.05)
    approvals.grant("user:fin", "finance")
    llm.script(
        Reply(tool_calls=[ToolCall("send_email", {"to": "boss@corp.com", "body": "hi"})]),
        Reply("Email sent."),
    )
    agent = wrap(build(llm), approvals={"send_email": wflo.Approval(approvers=["role:finance"])})
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["out"] = agent.run_sync("mail the boss", run_id="pa-approve")
        except BaseException as exc:
            result["error"] = exc
        finally:
            asyncio.get_event_loop().close()  # the thread's loop, made by run_sync

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 20
    while not approvals.list(run_id="pa-approve") and time.monotonic() < deadline:
        time.sleep(0.05)
    (request,) = approvals.list(run_id="pa-approve")
    # The request is filed just before the run is marked waiting: give the mark a moment.
    while wflo.RunHandle("pa-approve").status() != "waiting" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert wflo.RunHandle("pa-approve").status() == "waiting"
    assert executed == [] and llm.request_count == 1
    approvals.approve(request.id, principal="user:fin", action_hash=request.action_hash)
    t.join(30)
    assert "error" not in result, result
    assert result["out"].output == "Email sent."
    assert executed == [("send_email", {"to": "boss@corp.com", "body": "hi"})]
    assert llm.request_count == 2  # the first LLM call was replayed, not re-sent
    assert wflo.RunHandle("pa-approve").status() == "succeeded"


CRASH_APP = """
import os, signal, sys
import wflo
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

effects, marker, base = sys.argv[1], sys.argv[2], sys.argv[3]
agent = Agent(OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(base_url=base, api_key="t")), name="crashy")

@agent.tool_plain
def search(query: str) -> str:
    \"\"\"Search.\"\"\"
    with open(effects, "a") as f:
        f.write("search " + query + "\\n")
    return "found " + query

@agent.tool_plain
def fetch(url: str) -> str:
    \"\"\"Fetch a page.\"\"\"
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    with open(effects, "a") as f:
        f.write("fetch " + url + "\\n")
    return "page " + url

wrapped = wflo.wrap(agent, budget=wflo.Budget(usd="1"))
print(wrapped.run_sync("research", run_id="pa-crash").output)
"""


def test_sigkill_mid_run_then_resume_resends_no_finished_call(configured: str, llm: LLMServer, tmp_path: Path) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"query": "otters"})]),
        Reply(tool_calls=[ToolCall("fetch", {"url": "https://otters.example"})]),
        Reply("Otters use rocks."),
    )
    script = tmp_path / "app.py"
    script.write_text(CRASH_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": configured, "PYTHONPATH": os.pathsep.join(sys.path)})
    effects, marker = tmp_path / "effects.log", tmp_path / "died-once"
    argv = [sys.executable, str(script), str(effects), str(marker), llm.openai_url]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == -9, first.stderr
    assert llm.request_count == 2
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines()[-1] == "Otters use rocks."
    assert llm.request_count == 3  # the two finished LLM calls were replayed from the journal
    assert effects.read_text().splitlines() == ["search otters", "fetch https://otters.example"]
    assert len(_calls("pa-crash", "llm")) == 3 and len(_calls("pa-crash", "tool")) == 2


def test_finished_run_id_is_not_rerun(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("once"))
    agent = wrap(build(llm))
    assert agent.run_sync("hi", run_id="pa-once").output == "once"
    with pytest.raises(wflo.UserError, match="already ended"):
        agent.run_sync("hi", run_id="pa-once")
    assert llm.request_count == 1


@pytest.mark.parametrize("decision", ["approve", "edit", "reject"])
def test_requires_approval_tools_become_durable_wflo_approvals(
    configured: str, llm: LLMServer, monkeypatch: pytest.MonkeyPatch, decision: str
) -> None:
    """pydantic-ai's own deferred approvals (requires_approval=True) wait durably in wflo."""
    from pydantic_ai import DeferredToolRequests

    monkeypatch.setenv("WFLO_PRINCIPAL", "user:agent-owner")
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=0.05)
    llm.script(Reply(tool_calls=[ToolCall("delete_file", {"path": "a.txt"})]), Reply("Done."))
    http = httpx2.AsyncClient(limits=httpx2.Limits(max_keepalive_connections=0))
    provider = OpenAIProvider(base_url=llm.openai_url, api_key="test", http_client=http)
    agent: Any = Agent(OpenAIChatModel("gpt-4o-mini", provider=provider), output_type=[str, DeferredToolRequests])
    deleted: list[str] = []

    @agent.tool_plain(requires_approval=True)
    def delete_file(path: str) -> str:
        """Delete a file."""
        deleted.append(path)
        return f"deleted {path}"

    wrapped = wrap(agent)
    run_id = f"pa-deferred-{decision}"
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["out"] = wrapped.run_sync("delete a.txt", run_id=run_id)
        except BaseException as exc:
            result["error"] = exc
        finally:
            asyncio.get_event_loop().close()

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 20
    while not approvals.list(run_id=run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    (request,) = approvals.list(run_id=run_id)
    assert "delete_file" in request.message and deleted == []
    if decision == "approve":
        approvals.approve(request.id, principal="user:ops", action_hash=request.action_hash)
    elif decision == "edit":
        approvals.approve(request.id, principal="user:ops", action_hash=request.action_hash,
                          args={"data": {"path": "b.txt"}})  # fmt: skip
    else:
        approvals.reject(request.id, principal="user:ops", reason="keep it")
    t.join(30)
    assert "error" not in result, result
    assert result["out"].output == "Done."
    assert deleted == {"approve": ["a.txt"], "edit": ["b.txt"], "reject": []}[decision]
    if decision == "reject":
        tool_reply = [m for m in llm.requests[-1].body["messages"] if m["role"] == "tool"]
        assert "keep it" in tool_reply[0]["content"]
    assert wflo.RunHandle(run_id).status() == "succeeded"
