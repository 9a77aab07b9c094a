"""The demo's research agent: plain HTTP calls to an OpenAI-compatible API, made durable and guarded by wflo.

Every function here is ordinary agent code; the decorators are all wflo adds. The demo
talks to wflo's scripted test server, so no API key or network is needed. It calls the
Chat Completions API with ``httpx`` (a core dependency) rather than the ``openai`` SDK, so the
README's first command works with the core install alone; wflo sees the calls the same way
(it guards LLM requests at the HTTP layer, whichever SDK sends them).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import httpx

import wflo

BASE = os.environ.get("WFLO_DEMO_LLM", "http://127.0.0.1:1/v1")


def chat(messages: list[Any], *, max_tokens: int, tools: list[Any] | None = None) -> dict[str, Any]:
    """One Chat Completions call; returns the first choice's message (a dict)."""
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": max_tokens}
    if tools:
        body["tools"] = tools
    with httpx.Client(base_url=os.environ.get("WFLO_DEMO_LLM", BASE), timeout=30) as http:
        response = http.post("/chat/completions", json=body, headers={"authorization": "Bearer demo"})
    response.raise_for_status()
    message: dict[str, Any] = response.json()["choices"][0]["message"]
    return message


@wflo.tool
def search(query: str) -> str:
    """Search the web."""
    return f"3 results about {query}"


@wflo.tool(approval=wflo.Approval(when=lambda amount, **_: amount > 100, approvers=["role:finance"], timeout="1h"))
def refund(order_id: str, amount: float) -> str:
    """Refund a customer order (over $100 needs finance's approval)."""
    return f"refunded ${amount:.2f} on order {order_id}"


@wflo.workflow(name="demo.spend", budget=wflo.Budget(usd="0.0030"), guards=wflo.LoopGuard(max_repeats=None))
def spend(questions: int) -> dict[str, Any]:
    """Asks one question after another until the run's budget refuses the next call."""
    answers = 0
    try:
        for i in range(questions):
            chat([{"role": "user", "content": f"Question {i}: summarise otter research."}], max_tokens=800)
            answers += 1
    except wflo.BudgetExceededError as exc:
        return {
            "answers": answers,
            "refused": {
                "scope": exc.scope,
                "limit": str(exc.limit),
                "spent": str(exc.spent),
                "requested": str(exc.requested),
            },
        }
    return {"answers": answers, "refused": None}


@wflo.workflow(name="demo.loop", guards=wflo.LoopGuard(max_repeats=3))
def loop(turns: int) -> str:
    """A tool-calling agent whose model keeps asking for the same search."""
    messages: list[Any] = [{"role": "user", "content": "Find otter facts."}]
    tools: list[Any] = [search.openai_schema()]
    for _ in range(turns):
        msg = chat(messages, tools=tools, max_tokens=100)
        if not msg.get("tool_calls"):
            return str(msg.get("content") or "")
        messages.append({"role": "assistant", "content": None, "tool_calls": msg["tool_calls"]})
        for tc in msg["tool_calls"]:
            arguments = json.loads(tc["function"]["arguments"]) if tc.get("type") == "function" else {}
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": search(**arguments)})
    return "gave up"


@wflo.workflow(name="demo.refund")
def refund_flow(order_id: str, amount: float) -> str:
    """An agent step that needs a human: a large refund."""
    return refund(order_id, amount)


@wflo.workflow(name="demo.analyst")
def analyst(task: str) -> list[dict[str, Any]]:
    """A data agent whose model writes Python; wflo runs it in the sandbox (``wflo.tools.python``)."""
    from ..tools import python

    run_code = python(wflo.Sandbox(memory="256MiB", cpu_seconds=5, wall="15s", output="64KiB"))
    messages: list[Any] = [{"role": "user", "content": task}]
    tools: list[Any] = [run_code.openai_schema()]
    ran: list[dict[str, Any]] = []
    for _ in range(4):
        msg = chat(messages, tools=tools, max_tokens=200)
        if not msg.get("tool_calls"):
            break
        messages.append({"role": "assistant", "content": None, "tool_calls": msg["tool_calls"]})
        for tc in msg["tool_calls"]:
            arguments = json.loads(tc["function"]["arguments"]) if tc.get("type") == "function" else {}
            result = run_code(**arguments)
            ran.append(result)
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": json.dumps(result)})
    return ran


@wflo.step
def crash_once(marker: str) -> None:
    """Kills this process (SIGKILL, no clean-up) the first time it runs."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)


@wflo.workflow(name="demo.crash", budget=wflo.Budget(usd="0.05"))
def crashy(marker: str) -> list[str]:
    """Three LLM calls; the process dies after the second."""
    out = []
    for i in range(3):
        reply = chat([{"role": "user", "content": f"Step {i} of the report."}], max_tokens=50)
        out.append(str(reply.get("content") or ""))
        if i == 1:
            crash_once(marker)
    return out
