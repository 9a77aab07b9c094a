"""LLM calls made by a run's asyncio tasks, through the real ``openai`` SDK to the scripted server:
when the tasks reach their calls in another order on resume than when they were recorded, each
call is replayed from its own request (the SDK's HTTP client starts tasks of its own around a live
request: they must not disturb this), and nothing is sent again."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

import wflo
from wflo import _config
from wflo.testing import LLMServer, Reply

TASKS = 4


def test_gathered_llm_calls_replay_their_own_answers(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda request: Reply(f"answer to {request.body['messages'][-1]['content']}", output_tokens=5)
    timing = {"delays": [0.03 * (TASKS - i) for i in range(TASKS)]}
    crash = {"on": True}
    saved: list[str] = []

    @wflo.step(name="trl.save")
    async def save(i: int, text: str) -> str:
        saved.append(text)
        return f"{i}={text}"

    async def task(client: openai.AsyncOpenAI, i: int) -> str:
        await asyncio.sleep(timing["delays"][i])
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": f"question {i}"}]
        )
        return await save(i, reply.choices[0].message.content or "")

    @wflo.workflow(name="trl.gather", budget=wflo.Budget(usd="1"))
    async def flow() -> list[str]:
        client = openai.AsyncOpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)
        out = list(await asyncio.gather(*(task(client, i) for i in range(TASKS))))
        await client.close()
        if crash["on"]:
            raise KeyboardInterrupt  # the process dies after every call was recorded
        return out

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(flow.options(id="trl-1").arun())
    sent = llm.request_count
    assert sent == TASKS
    events = _config.get_store().events("trl-1")
    asked = [e.data for e in events if e.type == "call.completed" and e.data["kind"] == "llm"]
    order = [d["output"]["body"].split("question ")[1][0] for d in sorted(asked, key=lambda d: int(d["call"]))]
    assert order != sorted(order), "the tasks asked in task order: the replay below tests nothing"

    crash["on"] = False
    timing["delays"].reverse()
    expected = [f"{i}=answer to question {i}" for i in range(TASKS)]
    assert wflo.resume("trl-1") == expected
    assert llm.request_count == sent, "an LLM call was sent again"
    assert sorted(saved) == sorted(f"answer to question {i}" for i in range(TASKS)), "a step ran again"
    store = _config.get_store()
    assert store.get_run("trl-1").status == "succeeded"
    calls: list[Any] = [e.data["call"] for e in store.events("trl-1") if e.type == "call.completed"]
    assert len(calls) == len(set(calls)) == 2 * TASKS
