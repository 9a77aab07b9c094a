"""A small research agent with two tools, under wflo: budget, loop guard, approval, journal.

Runs against wflo's scripted LLM server with no API key. Set OPENAI_API_KEY to use the real
OpenAI API instead (the agent code does not change).

    python examples/research_agent.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

try:
    import openai
except ImportError:
    print("examples/research_agent.py needs the OpenAI SDK: pip install 'wflo[openai]'")
    sys.exit(0)

import wflo
from wflo.testing import LLMServer, Reply, ToolCall


@wflo.tool
def search(query: str) -> str:
    """Search the web for a query."""
    return f"Sea otters use rocks as tools. (result for {query!r})"


@wflo.tool(approval=wflo.Approval(when=lambda to, **_: not to.endswith("@example.org")))
def send_email(to: str, body: str) -> str:
    """Send an email (outside example.org it needs a human's approval)."""
    return f"sent to {to}"


TOOLS = {"search": search, "send_email": send_email}


@wflo.workflow(name="example.research", budget=wflo.Budget(usd="0.05"), guards=wflo.LoopGuard(max_repeats=3))
def research(topic: str, base_url: str | None) -> str:
    client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "test"))
    messages: list = [{"role": "system", "content": "Research, then email the summary to team@example.org."},
                      {"role": "user", "content": topic}]  # fmt: skip
    for _ in range(10):
        msg = (
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                tools=[t.openai_schema() for t in TOOLS.values()],
                max_tokens=300,
            )
            .choices[0]
            .message
        )
        if not msg.tool_calls:
            return msg.content or ""
        messages.append(
            {"role": "assistant", "content": None, "tool_calls": [tc.model_dump() for tc in msg.tool_calls]}
        )
        for tc in msg.tool_calls:
            result = TOOLS[tc.function.name](**json.loads(tc.function.arguments))
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": result})
    return "out of turns"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wflo.configure(database=f"sqlite:///{tmp}/example.db")
        if os.environ.get("OPENAI_API_KEY"):
            print(research.run("What tools do sea otters use?", None))
            return
        with LLMServer() as llm:
            llm.script(
                Reply(tool_calls=[ToolCall("search", {"query": "sea otter tools"})]),
                Reply(tool_calls=[ToolCall("send_email", {"to": "team@example.org", "body": "Otters use rocks."})]),
                Reply("Done: otters use rocks as tools; the team has the summary."),
            )
            handle = research.options(id="example-research").start("What tools do sea otters use?", llm.openai_url)
            wflo.engine.Worker().run(max_runs=1, idle_timeout=2)
            print(handle.result(timeout=30))
            events = handle.events()
            llm_calls = [e.data for e in events if e.type == "call.completed" and e.data["kind"] == "llm"]
            print(
                f"{len(events)} journal events, {len(llm_calls)} LLM calls costing ${sum(float(c['cost_usd']) for c in llm_calls):.6f}"
            )
            assert handle.status() == "succeeded" and len(llm_calls) == 3


if __name__ == "__main__":
    main()
