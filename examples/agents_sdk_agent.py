"""A small OpenAI Agents SDK research agent with two tools, under wflo: budget, loop guard,
approval, journal.

Runs against wflo's scripted LLM server with no API key. Set OPENAI_API_KEY to use the real
OpenAI API instead (the agent does not change).

    pip install 'wflo[agents]' && python examples/agents_sdk_agent.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

try:
    import agents
except ImportError:
    print("examples/agents_sdk_agent.py needs the OpenAI Agents SDK: pip install 'wflo[agents]'")
    sys.exit(0)

from openai import AsyncOpenAI

import wflo
from wflo.testing import LLMServer, Reply, ToolCall

agents.set_tracing_disabled(True)  # the SDK's tracing would upload spans to OpenAI


@agents.function_tool
def search(query: str) -> str:
    """Search the web for a query."""
    return f"Sea otters use rocks as tools. (result for {query!r})"


@agents.function_tool
def send_email(to: str, body: str) -> str:
    """Send an email (outside example.org it needs a human's approval)."""
    return f"sent to {to}"


def researcher(base_url: str | None) -> agents.Agent:
    client = AsyncOpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "test"))
    return agents.Agent(
        name="researcher",
        instructions="Research the topic, then email the summary to team@example.org.",
        tools=[search, send_email],
        model=agents.OpenAIChatCompletionsModel(model="gpt-4o-mini", openai_client=client),
        model_settings=agents.ModelSettings(max_tokens=300),
    )


OPTIONS = {
    "name": "example.agents-research",
    "budget": wflo.Budget(usd="0.05"),
    "guards": wflo.LoopGuard(max_repeats=3),
    "approvals": {"send_email": wflo.Approval(when=lambda to, **_: not to.endswith("@example.org"))},
}


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wflo.configure(database=f"sqlite:///{tmp}/example.db")
        topic = "What tools do sea otters use?"
        if os.environ.get("OPENAI_API_KEY"):
            print((await wflo.wrap(researcher(None), **OPTIONS).run(topic)).final_output)
            return
        with LLMServer() as llm:
            llm.script(
                Reply(tool_calls=[ToolCall("search", {"query": "sea otter tools"})]),
                Reply(tool_calls=[ToolCall("send_email", {"to": "team@example.org", "body": "Otters use rocks."})]),
                Reply("Otters use rocks as tools; the team has the summary."),
            )
            agent = wflo.wrap(researcher(llm.openai_url), **OPTIONS)
            result = await agent.options(id="example-agents").run(topic)
            print(result.final_output)
        events = wflo.RunHandle("example-agents").events()
        llm_calls = [e.data for e in events if e.type == "call.completed" and e.data["kind"] == "llm"]
        tools = [e.data["name"] for e in events if e.type == "call.completed" and e.data["kind"] == "tool"]
        cost = sum(float(c["cost_usd"]) for c in llm_calls)
        print(
            f"{len(events)} journal events, {len(llm_calls)} LLM calls costing ${cost:.6f}, tools: {', '.join(tools)}"
        )
        assert len(llm_calls) == 3 and tools == ["search", "send_email"]


if __name__ == "__main__":
    asyncio.run(main())
