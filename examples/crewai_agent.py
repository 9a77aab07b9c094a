"""A small CrewAI research agent with two tools, under wflo: budget, loop guard, approval, journal.

Runs against wflo's scripted LLM server with no API key. Set OPENAI_API_KEY to use the real
OpenAI API instead (the crew does not change).

    pip install 'wflo[crewai]' && python examples/crewai_agent.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")  # nothing leaves the machine but LLM calls
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CrewAI's own import-time and deprecation warnings
        import crewai
        from crewai.tools import tool
except ImportError:
    print("examples/crewai_agent.py needs CrewAI: pip install 'wflo[crewai]'")
    sys.exit(0)

import wflo
from wflo.testing import LLMServer, Reply, ToolCall


@tool("search")
def search(query: str) -> str:
    """Search the web for a query."""
    return f"Sea otters use rocks as tools. (result for {query!r})"


@tool("send_email")
def send_email(to: str, body: str) -> str:
    """Send an email (outside example.org it needs a human's approval)."""
    return f"sent to {to}"


def research_crew(base_url: str | None) -> crewai.Crew:
    llm = crewai.LLM(model="openai/gpt-4o-mini", base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "test"),
                     max_tokens=300)  # fmt: skip
    agent = crewai.Agent(
        role="researcher", goal="Research a topic, then email the summary to team@example.org.",
        backstory="A careful researcher.", tools=[search, send_email], llm=llm, verbose=False,
    )  # fmt: skip
    task = crewai.Task(description="{topic}", expected_output="A two-sentence summary.", agent=agent)
    return crewai.Crew(agents=[agent], tasks=[task], verbose=False)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wflo.configure(database=f"sqlite:///{tmp}/example.db")
        options = {
            "name": "example.crewai-research",
            "budget": wflo.Budget(usd="0.05"),
            "guards": wflo.LoopGuard(max_repeats=3),
            "approvals": {"send_email": wflo.Approval(when=lambda to, **_: not to.endswith("@example.org"))},
        }
        topic = {"topic": "What tools do sea otters use?"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # CrewAI's own
            if os.environ.get("OPENAI_API_KEY"):
                print(wflo.wrap(research_crew(None), **options).kickoff(topic).raw)
                return
            with LLMServer() as llm:
                llm.script(
                    Reply(tool_calls=[ToolCall("search", {"query": "sea otter tools"})]),
                    Reply(tool_calls=[ToolCall("send_email", {"to": "team@example.org", "body": "Otters use rocks."})]),
                    Reply("Otters use rocks as tools; the team has the summary."),
                )
                crew = wflo.wrap(research_crew(llm.openai_url), **options)
                print(crew.options(id="example-crewai").kickoff(topic).raw)
        events = wflo.RunHandle("example-crewai").events()
        llm_calls = [e.data for e in events if e.type == "call.completed" and e.data["kind"] == "llm"]
        tools = [e.data["name"] for e in events if e.type == "call.completed" and e.data["kind"] == "tool"]
        cost = sum(float(c["cost_usd"]) for c in llm_calls)
        print(
            f"{len(events)} journal events, {len(llm_calls)} LLM calls costing ${cost:.6f}, tools: {', '.join(tools)}"
        )
        assert len(llm_calls) == 3 and tools == ["search", "send_email"]


if __name__ == "__main__":
    main()
