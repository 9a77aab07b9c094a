"""The API format modules: which requests they claim, and the bounds they give (offline)."""

from __future__ import annotations

from typing import Any

import pytest

import wflo
from wflo.cost._formats import BY_API, LLMRequest, body_bound, detect


def _req(api: str, body: dict[str, Any], path: str = "/v1/x") -> LLMRequest:
    fmt = BY_API[api]
    return LLMRequest(fmt, fmt.model(body, path), "openai", "h", path, "httpx", body)


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/chat/completions", "chat"),
        ("/openai/deployments/d/chat/completions", "chat"),
        ("/v1/completions", "completions"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/responses", "responses"),
        ("/v1/messages", "messages"),
        ("/v1beta/models/gemini-2.0-flash:generateContent", "gemini"),
        ("/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-pro:streamGenerateContent", "gemini"),
        ("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse", "bedrock"),
        ("/v1/messages/count_tokens", None),
        ("/v1/images/generations", None),
        ("/model/x/converse-stream", None),
    ],
)
def test_detect(path: str, api: str | None) -> None:
    fmt = detect("POST", path)
    assert (fmt.api if fmt else None) == api
    assert detect("GET", path) is None


def test_models_from_paths() -> None:
    gem = BY_API["gemini"]
    assert gem.model({}, "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-pro:generateContent") == (
        "gemini-2.5-pro"
    )
    bed = BY_API["bedrock"]
    assert bed.model({}, "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse") == (
        "anthropic.claude-3-haiku-20240307-v1:0"
    )
    assert bed.model({"modelId": "amazon.nova-micro-v1:0"}, "") == "amazon.nova-micro-v1:0"
    assert BY_API["chat"].model({}, "/openai/deployments/my-4o/chat/completions") == "my-4o"


def test_choices_per_format() -> None:
    assert BY_API["chat"].choices({"n": 8}) == 8
    assert BY_API["chat"].choices({"n": 0}) == 1
    assert BY_API["completions"].choices({"n": 2, "best_of": 5, "prompt": ["a", "b", "c"]}) == 15
    assert BY_API["completions"].choices({"prompt": [1, 2, 3]}) == 1  # one prompt, as token ids
    assert BY_API["gemini"].choices({"generationConfig": {"candidateCount": 4}}) == 4
    assert BY_API["embeddings"].choices({"input": "x"}) == 0


def test_caps_read_and_written_where_each_api_keeps_them() -> None:
    body: dict[str, Any] = {}
    req = _req("gemini", body, "/v1beta/models/g:generateContent")
    req.set_output_cap(100)
    assert body == {"generationConfig": {"maxOutputTokens": 100}} and req.changed
    assert BY_API["bedrock"].get_cap({"inferenceConfig": {"maxTokens": 7}}) == 7
    assert BY_API["chat"].cap_field({}, "openai") == "max_completion_tokens"
    assert BY_API["chat"].cap_field({}, "groq") == "max_tokens"
    assert BY_API["completions"].default_cap == 16


def test_a_request_with_two_caps_is_bounded_by_the_larger_and_gets_both_written() -> None:
    # A server may read either field: max_completion_tokens=10 beside max_tokens=100000 was
    # bounded (and reserved) at 10, while a server reading max_tokens could bill 100,000.
    chat = BY_API["chat"]
    assert chat.get_cap({"max_completion_tokens": 10, "max_tokens": 100000}) == 100000
    assert chat.get_cap({"max_tokens": "100000"}) is None  # a lenient server reads it as a number
    assert chat.get_cap({"max_completion_tokens": 10, "max_tokens": 2.5}) is None
    body: dict[str, Any] = {"max_completion_tokens": 10, "max_tokens": 100000}
    _req("chat", body).set_output_cap(50)
    assert body == {"max_completion_tokens": 50, "max_tokens": 50}
    # With none, the one the provider reads (OpenAI's reasoning models refuse max_tokens): the
    # event said max_completion_tokens while max_tokens was written.
    body = {}
    _req("chat", body).set_output_cap(50)  # provider "openai"
    assert body == {"max_completion_tokens": 50}


def test_counts_are_read_as_a_lenient_server_reads_them() -> None:
    # n="8" or 8.0: vLLM bills eight outputs; they were read as one.
    chat = BY_API["chat"]
    assert chat.choices({"n": "8"}) == chat.choices({"n": 8.0}) == chat.choices({"n": " 8 "}) == 8
    assert chat.choices({"n": "eight"}) == chat.choices({"n": 2.5}) == chat.choices({"n": True}) == 1
    assert BY_API["completions"].choices({"n": "2", "best_of": "5", "prompt": "a"}) == 5


def test_text_bound_is_at_least_the_utf8_size() -> None:
    body = {"messages": [{"role": "user", "content": "héllo wörld " * 50}], "tools": [{"type": "function"}]}
    assert body_bound(body) >= len(("héllo wörld " * 50).encode())


def test_media_bounded_by_the_window_or_refused() -> None:
    req = _req("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
    assert BY_API["chat"].input_tokens(req, 128_000) == 128_000
    with pytest.raises(wflo.errors.UnboundedRequestError, match="context window is unknown"):
        BY_API["chat"].input_tokens(req, None)
    bedrock = _req(
        "bedrock", {"messages": [{"role": "user", "content": [{"document": {"name": "a", "format": "pdf"}}]}]}
    )
    assert BY_API["bedrock"].input_tokens(bedrock, 200_000) == 200_000


def test_embeddings_bound_each_input_by_the_window() -> None:
    req = _req("embeddings", {"input": ["x" * 10_000, "y" * 10_000, "z"]})
    assert BY_API["embeddings"].input_tokens(req, 8192) <= 8192 * 2 + 100


def test_gemini_thinking_reserved_on_top_of_the_cap() -> None:
    req = _req("gemini", {"generationConfig": {"candidateCount": 2, "thinkingConfig": {"thinkingBudget": 1000}}})
    assert BY_API["gemini"].extra_output_tokens(req) == 2000
    assert BY_API["gemini"].extra_output_tokens(_req("gemini", {})) == 32768


def test_usage_of_each_format() -> None:
    g = BY_API["gemini"].usage(
        {"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 3, "thoughtsTokenCount": 4}}
    )
    assert g is not None and (g.input_tokens, g.output_tokens, g.reasoning_tokens) == (10, 7, 4)
    b = BY_API["bedrock"].usage({"usage": {"inputTokens": 5, "outputTokens": 2, "cacheReadInputTokens": 3,
                                           "cacheWriteInputTokens": 4}})  # fmt: skip
    assert b is not None and (b.input_tokens, b.cached_input_tokens, b.cache_write_tokens) == (12, 3, 4)
    e = BY_API["embeddings"].usage({"usage": {"prompt_tokens": 9, "total_tokens": 9}})
    assert e is not None and (e.input_tokens, e.output_tokens) == (9, 0)


def test_refused_shapes() -> None:
    with pytest.raises(wflo.errors.UnboundedRequestError, match="conversation"):
        BY_API["responses"].check(_req("responses", {"conversation": "conv_1"}))
    with pytest.raises(wflo.errors.UnboundedRequestError, match="web_search"):
        BY_API["messages"].check(_req("messages", {"tools": [{"type": "web_search_20250305"}]}))
    with pytest.raises(wflo.errors.UnboundedRequestError, match="cached content"):
        BY_API["gemini"].check(_req("gemini", {"cachedContent": "c/1"}))
    with pytest.raises(wflo.errors.UnboundedRequestError, match="billed per use"):
        BY_API["gemini"].check(_req("gemini", {"tools": [{"googleSearch": {}}]}))
    BY_API["gemini"].check(_req("gemini", {"tools": [{"functionDeclarations": []}]}))
    with pytest.raises(wflo.errors.UnboundedRequestError, match="priority"):
        BY_API["responses"].check(_req("responses", {"service_tier": "priority"}))
    with pytest.raises(wflo.errors.UnboundedRequestError, match="prediction"):
        BY_API["chat"].check(_req("chat", {"prediction": {"type": "content", "content": "x"}}))
    # The search models search (and bill a fee) on every call, without web_search_options; they
    # were priced at their token rates alone.
    with pytest.raises(wflo.errors.UnboundedRequestError, match="billed per search"):
        BY_API["chat"].check(_req("chat", {"model": "gpt-4o-mini-search-preview", "messages": []}))


def test_registered_base_url_matches_host_port_and_prefix() -> None:
    eg = wflo.egress
    try:
        eg.register("http://localhost:8000/v1", provider="openai")
        assert eg.provider_for("localhost", 8000, "/v1/chat/completions") == "openai"
        assert eg.provider_for("localhost", 8001, "/v1/chat/completions") is None
        assert eg.provider_for("localhost", 8000, "/other") is None
    finally:
        eg.clear()
