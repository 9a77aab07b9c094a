"""A LangGraph research agent with two tools, under wflo with one line: ``wflo.wrap(graph)``.

Runs against wflo's scripted LLM server with no API key. Set OPENAI_API_KEY to use the real
OpenAI API instead (the graph does not change). Needs ``pip install 'wflo[langgraph]'``.

    python examples/langgraph_agent.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

try:
    import langchain_openai  # noqa: F401
    import langgraph  # noqa: F401
except ImportError:
    print("examples/langgraph_agent.py needs LangGraph: pip install 'wflo[langgraph]'")
    sys.exit(0)

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

import wflo
from wflo.testing import LLMServer, Reply, ToolCall


@tool
def search(query: str) -> str:
    """Search the web for a query."""
    return f"Sea otters use rocks as tools. (result for {query!r})"


@tool
def send_email(to: str, body: str) -> str:
    """Send an email."""
    return f"sent to {to}"


def build(base_url: str | None) -> Any:
    tools = [search, send_email]
    model = ChatOpenAI(model="gpt-4o-mini", base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "test"),
                       max_tokens=300).bind_tools(tools)  # fmt: skip

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile(name="research")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wflo.configure(database=f"sqlite:///{tmp}/example.db")
        question = {"messages": [("system", "Research, then email the summary to team@example.org."),
                                 ("user", "What tools do sea otters use?")]}  # fmt: skip
        config = {"configurable": {"thread_id": "example-langgraph"}}
        options: dict[str, Any] = {
            "budget": wflo.Budget(usd="0.05"),
            "guards": wflo.LoopGuard(max_repeats=3),
            # outside example.org an email needs a human's approval (run pauses until decided)
            "approvals": {"send_email": wflo.Approval(when=lambda to, **_: not to.endswith("@example.org"))},
        }
        if os.environ.get("OPENAI_API_KEY"):
            print(wflo.wrap(build(None), **options).invoke(question, config)["messages"][-1].content)
            return
        with LLMServer() as llm:
            llm.script(
                Reply(tool_calls=[ToolCall("search", {"query": "sea otter tools"})]),
                Reply(tool_calls=[ToolCall("send_email", {"to": "team@example.org", "body": "Otters use rocks."})]),
                Reply("Done: otters use rocks as tools; the team has the summary."),
            )
            graph = wflo.wrap(build(llm.openai_url), **options)
            print(graph.invoke(question, config)["messages"][-1].content)
            events = wflo.RunHandle("example-langgraph").events()
            calls = [e.data for e in events if e.type == "call.completed"]
            llm_calls = [c for c in calls if c["kind"] == "llm"]
            cost = sum(float(c["cost_usd"]) for c in llm_calls)
            print(f"{len(events)} journal events: {len(llm_calls)} LLM calls costing ${cost:.6f}, "
                  f"{len(calls) - len(llm_calls)} tool calls")  # fmt: skip
            assert len(llm_calls) == 3 and len(calls) == 5


if __name__ == "__main__":
    main()
