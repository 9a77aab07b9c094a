"""CrewAI under wflo.wrap: the real crewai package against wflo.testing's LLM server (no mocks, no internet)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", ImportWarning)  # crewai's own import-time warning (crewai.rag), not ours
    crewai = pytest.importorskip("crewai")
    from crewai.tools import tool as crewai_tool

import wflo
from wflo import _config
from wflo.approvals import approvals
from wflo.cost._api import ledger
from wflo.engine import Worker
from wflo.testing import LLMServer, Reply, ToolCall

HERE = Path(__file__).parent

# CrewAI's own deprecation warnings about its own fields, raised inside crewai (not ours).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """CrewAI's telemetry and tracing stay off: nothing may try to reach the internet."""
    monkeypatch.setenv("CREWAI_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("CREWAI_DISABLE_TRACKING", "true")
    monkeypatch.setenv("CREWAI_TRACING_ENABLED", "false")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")


EFFECTS: list[str] = []


@crewai_tool("search")
def search(query: str) -> str:
    """Search the web for a query."""
    EFFECTS.append(f"search {query}")
    return f"Sea otters use rocks as tools ({query})."


@crewai_tool("send_email")
def send_email(to: str, body: str) -> str:
    """Send an email."""
    EFFECTS.append(f"email {to}")
    return f"sent to {to}"


def _crew(llm: LLMServer, model: str = "gpt-4o-mini", **llm_options: Any) -> Any:
    EFFECTS.clear()
    model_client = crewai.LLM(model=f"openai/{model}", base_url=llm.openai_url, api_key="test", **llm_options)
    agent = crewai.Agent(
        role="researcher", goal="Answer questions", backstory="A careful researcher.", tools=[search, send_email],
        llm=model_client, verbose=False, max_retry_limit=0,
    )  # fmt: skip
    task = crewai.Task(description="What tools do sea otters use?", expected_output="A short answer.", agent=agent)
    return crewai.Crew(agents=[agent], tasks=[task], verbose=False)


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
    crew = wflo.wrap(_crew(llm), budget=wflo.Budget(usd="1"), name="crew-cost")
    out = crew.options(id="crew-cost").kickoff()
    assert out.raw == "Otters use rocks."  # CrewAI's own CrewOutput
    assert crew.agents[0].role == "researcher"  # attribute passthrough
    calls = _events("crew-cost", "llm")
    assert [(c["usage"]["input_tokens"], c["usage"]["output_tokens"]) for c in calls] == [(1200, 7), (1500, 4)]
    for c in calls:
        usage = genai_prices.Usage(input_tokens=c["usage"]["input_tokens"], output_tokens=c["usage"]["output_tokens"])
        price = genai_prices.calc_price(usage, model_ref="gpt-4o-mini", provider_id="openai")
        assert Decimal(c["cost_usd"]) == Decimal(price.total_price)
    assert ledger().scope_usage("run:crew-cost").spent == sum(Decimal(c["cost_usd"]) for c in calls)
    (tool_call,) = _events("crew-cost", "tool")
    assert tool_call["name"] == "search" and "Sea otters" in tool_call["output"]
    assert EFFECTS == ["search otters"]


def test_budget_for_two_calls_stops_the_third_before_sending(configured: str, llm: LLMServer) -> None:
    # Input free, output $1/MTok: each call reserves exactly its cap (1000 tokens, $0.001) and
    # settles the same; $0.00201 fits two calls and leaves less than 16 output tokens for a third.
    wflo.cost.prices.set("wflo-crew-model", input_per_mtok="0", output_per_mtok="1")
    for i in range(3):
        llm.script(Reply(tool_calls=[ToolCall("search", {"query": f"q{i}"})], output_tokens=1000))
    crew = wflo.wrap(_crew(llm, model="wflo-crew-model", max_tokens=1000), budget=wflo.Budget(usd="0.00201"))
    with pytest.raises(wflo.BudgetExceededError) as info:
        crew.options(id="crew-budget").kickoff()
    assert llm.request_count == 2  # the third call never left
    assert info.value.scope == "run:crew-budget"
    assert _config.get_store().get_run("crew-budget").status == "failed"
    usage = ledger().scope_usage("run:crew-budget")
    assert usage.spent == Decimal("0.002") and usage.reserved == 0


def test_repeated_tool_call_stopped_by_loop_guard(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda request: Reply(tool_calls=[ToolCall("search", {"query": "otters"})])
    crew = wflo.wrap(_crew(llm), guards=wflo.LoopGuard(max_repeats=3), budget=wflo.Budget(usd="1"))
    with pytest.raises(wflo.LoopDetectedError) as info:  # propagated through CrewAI, not swallowed
        crew.options(id="crew-loop").kickoff()
    assert info.value.detector == "max_repeats" and info.value.evidence["count"] == 4
    assert EFFECTS == ["search otters"] * 3  # the fourth call never ran
    assert llm.request_count == 4  # and the crew stopped: no LLM call after the stop
    assert _config.get_store().get_run("crew-loop").status == "stopped"


def test_tool_with_approval_policy_waits_then_resumes(configured: str, llm: LLMServer) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"query": "otters"})]),
        Reply(tool_calls=[ToolCall("send_email", {"to": "boss@corp.example", "body": "rocks"})]),
        Reply("Emailed the summary."),
    )
    crew = wflo.wrap(
        _crew(llm), name="crew-approval", budget=wflo.Budget(usd="1"),
        approvals={"send_email": wflo.Approval(when=lambda to, **_: not to.endswith("@example.org"))},
    )  # fmt: skip
    handle = crew.options(id="crew-approval").start()
    Worker().run(max_runs=1, idle_timeout=1)
    assert handle.status() == "waiting"
    assert EFFECTS == ["search otters"] and llm.request_count == 2
    (request,) = approvals.list(run_id=handle.id)
    assert request.action == {"tool": "send_email", "args": [], "kwargs": {"to": "boss@corp.example", "body": "rocks"}}
    approvals.approve(request.id, principal="user:boss", action_hash=request.action_hash)
    Worker().run(max_runs=1, idle_timeout=1)
    assert handle.result(timeout=30) == "Emailed the summary."
    # The resumed run replayed both LLM calls and the search: nothing was re-sent or re-run.
    assert EFFECTS == ["search otters", "email boss@corp.example"]
    assert llm.request_count == 3
    assert [c["name"] for c in _events(handle.id, "tool")] == ["search", "send_email"]


@pytest.mark.parametrize("on_reject", ["raise", "return"])
def test_rejected_tool_call_stops_the_crew_or_tells_the_model(configured: str, llm: LLMServer, on_reject: str) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("send_email", {"to": "all@corp.example", "body": "spam"})]),
        Reply("I was not allowed to send it."),
    )
    policy = wflo.Approval(on_reject=on_reject)
    crew = wflo.wrap(_crew(llm), name=f"crew-reject-{on_reject}", approvals={"send_email": policy})
    handle = crew.options(id=f"crew-reject-{on_reject}").start()
    Worker().run(max_runs=1, idle_timeout=1)
    (request,) = approvals.list(run_id=handle.id)
    approvals.reject(request.id, reason="no mass email", principal="user:boss")
    Worker().run(max_runs=1, idle_timeout=1)
    if on_reject == "raise":  # ApprovalRejected went through CrewAI and ended the run
        with pytest.raises(wflo.RunFailedError) as info:
            handle.result(timeout=30)
        assert info.value.error["type"] == "ApprovalRejected" and "no mass email" in info.value.error["message"]
        assert llm.request_count == 1
    else:  # the model read the reason and answered
        assert handle.result(timeout=30) == "I was not allowed to send it."
        assert "no mass email" in str(llm.requests[-1].body["messages"])
    assert EFFECTS == []


def test_kickoff_async(configured: str, llm: LLMServer) -> None:
    import asyncio

    llm.script(Reply("async answer"))
    crew = wflo.wrap(_crew(llm), name="crew-async")
    assert asyncio.run(crew.options(id="crew-async").kickoff_async()).raw == "async answer"
    assert _config.get_store().get_run("crew-async").status == "succeeded"


CRASH_APP = """
import os, signal, sys
import crewai
from crewai.tools import tool
import wflo

marker, effects = sys.argv[1], sys.argv[2]

@tool("search")
def search(query: str) -> str:
    '''Search the web for a query.'''
    with open(effects, "a") as fh:
        fh.write(query + "\\n")
    if query == "second" and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # mid-run: two LLM calls and one tool call finished
    return "result for " + query

model = crewai.LLM(model="openai/gpt-4o-mini", base_url=os.environ["LLM_URL"], api_key="test")
agent = crewai.Agent(role="researcher", goal="Answer", backstory="b", tools=[search], llm=model, verbose=False)
task = crewai.Task(description="Research otters", expected_output="an answer", agent=agent)
crew = wflo.wrap(crewai.Crew(agents=[agent], tasks=[task], verbose=False), name="crew-crash", budget=wflo.Budget(usd="1"))
print(crew.options(id="crew-crash").kickoff().raw)
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
        "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONWARNINGS": "ignore",
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
    # "first" finished before the kill: replayed; "second" was in flight: run again once.
    assert effects.read_text().split() == ["first", "second", "second"]
    assert len(_events("crew-crash", "llm")) == 3


# ----------------------------------------------------------------------------- CrewAI's threads
def _expert_client(llm: LLMServer) -> Any:
    import openai

    return openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)


def _threaded_crew(llm: LLMServer) -> Any:
    """Two tasks run by CrewAI in threads of their own (``async_execution``), the agent's work in
    CrewAI's pool (``max_execution_time``), and a tool that asks another model."""
    EFFECTS.clear()

    @crewai_tool("ask_expert")
    def ask_expert(question: str) -> str:
        """Ask an expert model a question."""
        EFFECTS.append(f"expert {question}")
        with _expert_client(llm) as client:
            answer = client.chat.completions.create(
                model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": question}]
            )
        return str(answer.choices[0].message.content)

    model_client = crewai.LLM(model="openai/gpt-4o-mini", base_url=llm.openai_url, api_key="test")
    agents = [
        crewai.Agent(
            role=f"researcher {i}",
            goal="Answer questions",
            backstory="Careful.",
            tools=[ask_expert],
            llm=model_client,
            verbose=False,
            max_retry_limit=0,
            max_execution_time=60,
        )
        for i in range(2)
    ]
    tasks = [
        crewai.Task(
            description=f"Question {i}: what do otters eat?",
            expected_output="A short answer.",
            agent=agents[i],
            async_execution=True,
        )
        for i in range(2)
    ]
    summary = crewai.Task(description="Summarize the answers.", expected_output="One line.", agent=agents[0],
                          context=tasks)  # fmt: skip
    return crewai.Crew(agents=agents, tasks=[*tasks, summary], verbose=False)


def _threaded_responder(request: Any) -> Reply:
    if request.model == "gpt-4o":
        return Reply("Expert: shellfish.", input_tokens=30, output_tokens=5)
    said = json.dumps(request.body.get("messages", []))
    if "Summarize the answers" in said:
        return Reply("Otters eat shellfish, twice confirmed.", input_tokens=500, output_tokens=8)
    if "Expert: shellfish." in said:
        return Reply("Otters eat shellfish.", input_tokens=400, output_tokens=6)
    return Reply(tool_calls=[ToolCall("ask_expert", {"question": "otter food?"})], input_tokens=300, output_tokens=9)


def test_llm_calls_in_crewai_threads_carry_the_run(configured: str, llm: LLMServer) -> None:
    llm.responder = _threaded_responder
    crew = wflo.wrap(_threaded_crew(llm), budget=wflo.Budget(usd="1"), name="crew-threads")
    crew.options(id="crew-threads").kickoff()
    calls = _events("crew-threads", "llm")
    # Every call that reached the server is on the run's record: 2 agents, each (tool call + answer),
    # the expert call each tool made, all from CrewAI's threads (lanes: ``t`` in the id), and the
    # summary task (sync: on the run's main path).
    assert llm.request_count == len(calls) == 7
    assert sorted(c["name"] for c in calls) == ["gpt-4o"] * 2 + ["gpt-4o-mini"] * 5
    threaded = [c["call"] for c in calls if c["usage"]["input_tokens"] != 500]  # all but the summary task
    assert len(threaded) == 6 and all("t" in call for call in threaded), threaded
    assert ledger().scope_usage("run:crew-threads").spent == sum(Decimal(c["cost_usd"]) for c in calls)
    assert len(_events("crew-threads", "tool")) == 2 and EFFECTS == ["expert otter food?"] * 2


def test_the_example_runs(tmp_path: Path) -> None:
    """``examples/crewai_agent.py`` as a user runs it. The main suite's environment has no
    crewai (``test_crewai_env.py``), so there the example only says which extra it needs; here
    it runs its crew against its own scripted LLM server."""
    example = HERE.parents[1] / "examples" / "crewai_agent.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}  # offline: see _offline
    proc = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "needs CrewAI" not in proc.stdout and "journal events, 3 LLM calls" in proc.stdout, proc.stdout
