"""An intercepted LLM call's attempts (wflo.engine._attempts): a connection error is retried as
the model's retry policy says, each attempt its own journaled call, and a replay follows the
recorded decisions without sending. Sync and async clients share the one attempt generator.

Before the attempt driver, the failed attempt's event recorded ``next: retry`` but the error
went straight to the SDK: no second attempt was made.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import openai
import pytest

import wflo
from wflo import _config
from wflo.testing import LLMServer, Reply


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:  # a port nothing listens on: each connection is refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _policies() -> Iterator[None]:
    wflo.policies.clear()
    yield
    wflo.policies.clear()


def _calls(run_id: str) -> list[dict]:
    return [
        e.data | {"_type": e.type}
        for e in _config.get_store().events(run_id)
        if e.type in ("call.completed", "call.failed") and e.data.get("kind") == "llm"
    ]


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_connection_error_retried_by_policy(configured: str, closed_port: int, flavour: str) -> None:
    wflo.policies.retry("model:gpt-4o-mini", wflo.RetryPolicy(attempts=3, backoff=0.01, jitter=False))
    url = f"http://127.0.0.1:{closed_port}/v1"

    if flavour == "sync":

        @wflo.workflow(budget=wflo.Budget(usd="1"))
        def flow() -> str:
            client = openai.OpenAI(base_url=url, api_key="t", max_retries=0)
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
            except openai.APIConnectionError:
                return "gave up"
            return "answered"

        result = flow.options(id=f"retry-{flavour}").run()
    else:

        @wflo.workflow(budget=wflo.Budget(usd="1"))
        async def aflow() -> str:
            client = openai.AsyncOpenAI(base_url=url, api_key="t", max_retries=0)
            try:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
            except openai.APIConnectionError:
                return "gave up"
            return "answered"

        result = asyncio.run(aflow.options(id=f"retry-{flavour}").arun())
    assert result == "gave up"
    calls = _calls(f"retry-{flavour}")
    assert [c["_type"] for c in calls] == ["call.failed"] * 3  # three attempts, then the SDK's error
    assert [c.get("next") for c in calls] == [{"retry": 2, "delay_s": 0.01}, {"retry": 3, "delay_s": 0.02}, None]


def test_retry_then_answer_and_the_replay_follows_it(configured: str, llm: LLMServer) -> None:
    wflo.policies.retry("model:gpt-4o-mini", wflo.RetryPolicy(attempts=3, backoff=0.01, jitter=False))
    llm.script(Reply(error=503), Reply("second time", input_tokens=5, output_tokens=2))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> str:
        client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
        return str(
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5).choices[0].message.content
        )

    assert flow.options(id="retry-503").run() == "second time"
    assert llm.request_count == 2
    assert [c.get("next", {}).get("retry") for c in _calls("retry-503")] == [2, None]
