"""A pydantic-ai research agent with two tools, under wflo with one line: ``wflo.wrap(agent)``.

Runs against wflo's scripted LLM server with no API key. Set OPENAI_API_KEY to use the real
OpenAI API instead (the agent does not change). Needs ``pip install 'wflo[pydantic-ai]'``.

    python examples/pydantic_ai_agent.py
"""

from __future__ import annotations

import os
import sys
import tempfile

try:
    import pydantic_ai  # noqa: F401
except ImportError:
    print("examples/pydantic_ai_agent.py needs pydantic-ai: pip install 'wflo[pydantic-ai]'")
    sys.exit(0)

from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import wflo
from wflo.testing import LLMServer, Reply, ToolCall


def build(base_url: str | None) -> Agent[None, str]:
    provider = OpenAIProvider(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "test"))
    agent: Agent[None, str] = Agent(
        OpenAIChatModel("gpt-4o-mini", provider=provider),
        name="researcher",
        instructions="Research, then email the summary to team@example.org.",
        model_settings={"max_tokens": 300},
    )

    @agent.tool_plain
    def search(query: str) -> str:
        """Search the web for a query."""
        return f"Sea otters use rocks as tools. (result for {query!r})"

    @agent.tool_plain
    def send_email(to: str, body: str) -> str:
        """Send an email."""
        return f"sent to {to}"

    return agent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wflo.configure(database=f"sqlite:///{tmp}/example.db")
        options = {
            "budget": wflo.Budget(usd="0.05"),
            "guards": wflo.LoopGuard(max_repeats=3),
            # outside example.org an email needs a human's approval (run pauses until decided)
            "approvals": {"send_email": wflo.Approval(when=lambda to, **_: not to.endswith("@example.org"))},
        }
        question = "What tools do sea otters use?"
        if os.environ.get("OPENAI_API_KEY"):
            print(wflo.wrap(build(None), **options).run_sync(question).output)
            return
        with LLMServer() as llm:
            llm.script(
                Reply(tool_calls=[ToolCall("search", {"query": "sea otter tools"})]),
                Reply(tool_calls=[ToolCall("send_email", {"to": "team@example.org", "body": "Otters use rocks."})]),
                Reply("Done: otters use rocks as tools; the team has the summary."),
            )
            agent = wflo.wrap(build(llm.openai_url), **options)
            print(agent.run_sync(question, run_id="example-pydantic-ai").output)
            events = wflo.RunHandle("example-pydantic-ai").events()
            calls = [e.data for e in events if e.type == "call.completed"]
            llm_calls = [c for c in calls if c["kind"] == "llm"]
            cost = sum(float(c["cost_usd"]) for c in llm_calls)
            print(f"{len(events)} journal events: {len(llm_calls)} LLM calls costing ${cost:.6f}, "
                  f"{len(calls) - len(llm_calls)} tool calls")  # fmt: skip
            assert len(llm_calls) == 3 and len(calls) == 5


if __name__ == "__main__":
    main()
