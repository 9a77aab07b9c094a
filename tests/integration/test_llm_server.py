"""wflo.testing.LLMServer through the real SDKs: the formats they parse, errors, streams, control API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import anthropic
import httpx
import openai
import pytest

from wflo.testing import LLMServer, Reply, ToolCall


def test_chat_text_tools_usage_and_truncation(llm: LLMServer) -> None:
    client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
    llm.script(
        Reply("one two three four", cached_tokens=3, reasoning_tokens=1),
        Reply(tool_calls=[ToolCall("search", {"q": "otters"})]),
    )
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].message.content == "one two" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 2 and r.usage.prompt_tokens_details.cached_tokens == 3
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "search" and json.loads(call.function.arguments) == {"q": "otters"}
    assert llm.requests[0].body["max_tokens"] == 2 and llm.request_count == 2
    client.close()


def test_chat_stream_with_usage_and_async(llm: LLMServer) -> None:
    llm.script(Reply("a b c", input_tokens=7), Reply("async!"))
    client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
    chunks = list(
        client.chat.completions.create(model="m", messages=[], stream=True, stream_options={"include_usage": True})
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c"
    assert chunks[-1].usage.prompt_tokens == 7 and chunks[-1].usage.completion_tokens == 3
    client.close()

    async def go() -> str:
        async with openai.AsyncOpenAI(base_url=llm.openai_url, api_key="t", max_retries=0) as ac:
            r = await ac.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            return r.choices[0].message.content or ""

    assert asyncio.run(go()) == "async!"


def test_responses_plain_and_stream(llm: LLMServer) -> None:
    client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
    llm.script(Reply("deep thought", reasoning_tokens=9, output_tokens=11), Reply("streamed answer"))
    r = client.responses.create(model="o3-mini", input="why")
    assert r.output_text == "deep thought" and r.usage.output_tokens_details.reasoning_tokens == 9
    with client.responses.stream(model="o3-mini", input="why") as stream:
        for _ in stream:
            pass
        assert stream.get_final_response().output_text == "streamed answer"
    client.close()


def test_anthropic_messages_stream_tools_and_cache_usage(llm: LLMServer) -> None:
    client = anthropic.Anthropic(base_url=llm.anthropic_url, api_key="t", max_retries=0)
    llm.script(
        Reply("hi there", input_tokens=20, cached_tokens=5, cache_write_tokens=3),
        Reply("x y z"),
        Reply(tool_calls=[ToolCall("t", {"n": 1})]),
    )
    m = client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].text == "hi there"
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.cache_creation_input_tokens) == (12, 5, 3)
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        assert s.get_final_text() == "x y z"
    m = client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].type == "tool_use" and m.content[0].input == {"n": 1} and m.stop_reason == "tool_use"
    client.close()


def test_errors_retry_after_and_slow_responses(llm: LLMServer) -> None:
    client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
    llm.script(Reply(error=429, retry_after=2), Reply(error=500, error_message="boom"), Reply("late", delay=0.5))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=[])
    assert info.value.response.headers["retry-after"] == "2"
    with pytest.raises(openai.InternalServerError, match="boom"):
        client.chat.completions.create(model="m", messages=[])
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.1).chat.completions.create(model="m", messages=[])
    client.close()
    aclient = anthropic.Anthropic(base_url=llm.anthropic_url, api_key="t", max_retries=0)
    llm.script(Reply(error=529))
    with pytest.raises(anthropic.APIStatusError) as ainfo:
        aclient.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert ainfo.value.status_code == 529
    aclient.close()


def test_aborted_stream(llm: LLMServer) -> None:
    """The server hangs up after N chunks: the client sees a stream that never finished."""
    client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
    llm.script(Reply("w " * 50, abort_stream_after=3))
    chunks = list(client.chat.completions.create(model="m", messages=[], stream=True))
    assert len(chunks) == 3
    assert all(c.choices[0].finish_reason is None for c in chunks)
    client.close()


def test_control_endpoints_from_another_process(llm: LLMServer) -> None:
    code = (
        "import httpx, sys; u = sys.argv[1];"
        "httpx.post(u + '/_wflo/script', json={'replies': [{'text': 'from afar', 'tool_calls': [{'name': 'x', 'arguments': {'a': 1}}]}]}).raise_for_status()"
    )
    subprocess.run([sys.executable, "-c", code, llm.url], check=True, timeout=30)
    client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
    assert r.choices[0].message.content == "from afar" and r.choices[0].message.tool_calls[0].function.name == "x"
    client.close()
    seen = httpx.get(llm.url + "/_wflo/requests").json()
    assert seen[-1]["api"] == "chat" and seen[-1]["body"]["messages"][0]["content"] == "q"


def test_a_server_stops_at_once() -> None:
    """stop() (leaving ``with``) does not wait out a half-second poll: each test starts and stops
    its own server, so that wait was paid hundreds of times a session."""
    import time

    for _ in range(3):
        with LLMServer() as server:
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 0.25
