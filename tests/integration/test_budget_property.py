"""P1, property-based: for any request shape wflo lets through, what the provider bills is
within what wflo reserved. Hypothesis generates requests (every API format, n/best_of/
candidates, tools, response schemas, images and PDFs, streams with and without usage,
previous_response_id chains, reasoning and cache tokens, tight budgets) against
wflo.testing's server, which bills as the provider would; through the real SDKs."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal
from typing import Any

import anthropic
import boto3
import botocore.config
import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wflo
from wflo import _config
from wflo.cost._prices import prices
from wflo.cost._usage import Usage
from wflo.testing import LLMServer, Reply

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}}
PDF = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
TOOL = {"type": "function", "function": {"name": "lookup", "description": "find things " * 20,
        "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "query " * 10}}}}}  # fmt: skip
SCHEMA = {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object", "properties": {
          "answer": {"type": "string", "description": "the answer " * 30}}}}}  # fmt: skip

# Boundary-heavy: long answers past every cap, many choices, tight and loose budgets.
words = st.one_of(st.sampled_from([0, 1, 2000]), st.integers(0, 3000)).map(lambda n: "word " * n)
caps = st.one_of(st.none(), st.sampled_from([16, 3000]), st.integers(16, 3000))
shape = st.fixed_dictionaries(
    {
        "api": st.sampled_from(["chat", "completions", "responses", "messages", "gemini", "embeddings", "bedrock"]),
        "text": words,
        "cap": caps,
        "n": st.one_of(st.sampled_from([1, 8]), st.integers(1, 8)),
        "best_of": st.integers(1, 4),
        "media": st.lists(st.sampled_from(["image", "pdf"]), max_size=2),
        "tools": st.booleans(),
        "schema": st.booleans(),
        "stream": st.booleans(),
        "include_usage": st.booleans(),
        "chain": st.booleans(),
        "reply_words": st.one_of(st.just(5000), st.integers(0, 5000)),
        "reasoning": st.integers(0, 5000),
        "cached": st.integers(0, 50),
        "budget": st.sampled_from(["0.0005", "0.003", "0.02", "0.5"]),
    }
)


def _send(llm: LLMServer, s: dict[str, Any]) -> None:
    api, text, cap = s["api"], s["text"] or "hi", s["cap"]
    media = [IMAGE if m == "image" else PDF for m in s["media"]]
    kw: dict[str, Any] = {}
    if api == "chat":
        with openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0) as c:
            content: Any = [{"type": "text", "text": text}, *media] if media else text
            if cap is not None:
                kw["max_tokens"] = cap
            if s["tools"]:
                kw["tools"] = [TOOL]
            if s["schema"]:
                kw["response_format"] = SCHEMA
            if s["stream"]:
                kw["stream"] = True
                if s["include_usage"]:
                    kw["stream_options"] = {"include_usage": True}
            r = c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": content}], n=s["n"], **kw
            )
            if s["stream"]:
                for _ in r:  # type: ignore[union-attr]
                    pass
    elif api == "completions":
        with openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0) as c:
            if cap is not None:
                kw["max_tokens"] = cap
            n = min(s["n"], s["best_of"])
            r = c.completions.create(model="gpt-3.5-turbo-instruct", prompt=text, n=n, best_of=s["best_of"],
                                     stream=s["stream"], **kw)  # fmt: skip
            if s["stream"]:
                for _ in r:  # type: ignore[union-attr]
                    pass
    elif api == "responses":
        with openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0) as c:
            if cap is not None:
                kw["max_output_tokens"] = cap
            first = c.responses.create(model="gpt-4o-mini", input=text, **kw)
            if s["chain"]:
                c.responses.create(model="gpt-4o-mini", input="and?", previous_response_id=first.id, **kw)
    elif api == "messages":
        with anthropic.Anthropic(base_url=llm.anthropic_url, api_key="t", max_retries=0) as c:
            system = [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
            c.messages.create(model="claude-haiku-4-5", max_tokens=cap or 1024, system=system,  # type: ignore[arg-type]
                              messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    elif api == "gemini":
        config: dict[str, Any] = {"candidateCount": min(s["n"], 4)}
        if cap is not None:
            config["maxOutputTokens"] = cap
        with httpx.Client() as c:
            verb = "streamGenerateContent" if s["stream"] else "generateContent"
            c.post(f"{llm.gemini_url}/models/gemini-2.5-flash:{verb}",
                   json={"contents": [{"role": "user", "parts": [{"text": text}]}], "generationConfig": config})  # fmt: skip
    elif api == "embeddings":
        with openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0) as c:
            c.embeddings.create(model="text-embedding-3-small", input=[text] * s["n"])
    else:
        client = boto3.client(
            "bedrock-runtime", endpoint_url=llm.url, region_name="us-east-1",
            aws_access_key_id="t", aws_secret_access_key="t", config=botocore.config.Config(retries={"max_attempts": 1}),
        )  # fmt: skip
        if cap is not None:
            kw["inferenceConfig"] = {"maxTokens": cap}
        client.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0",
                        messages=[{"role": "user", "content": [{"text": text}]}], **kw)  # fmt: skip


_counter = iter(range(1_000_000))


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=shape)
def test_billed_never_exceeds_reserved(configured: str, s: dict[str, Any]) -> None:
    run_id = f"prop-{next(_counter)}"
    with LLMServer(context_window=128_000) as llm:
        r = s["reply_words"]
        llm.responder = lambda _: Reply("w " * r, reasoning_tokens=s["reasoning"], cached_tokens=s["cached"])

        @wflo.workflow(name="prop", budget=wflo.Budget(usd=s["budget"]))
        def flow() -> None:
            _send(llm, s)

        with contextlib.suppress(wflo.BudgetExceededError, wflo.errors.UnboundedRequestError):
            flow.options(id=run_id).run()  # a refused call was never sent: nothing billed for it
        calls = [
            e.data
            for e in _config.get_store().events(run_id)
            if e.type in ("call.completed", "call.failed") and e.data.get("kind") == "llm" and "reserved_usd" in e.data
        ]
        sent = [c for c in calls if "error" not in c]
        assert len(sent) == len(llm.billed)  # every request that reached the server was reserved first
        for call, billed in zip(sent, llm.billed, strict=True):
            reserved = Decimal(call["reserved_usd"])
            assert Decimal(call["cost_usd"]) <= reserved, (s, call)
            usage = Usage(input_tokens=billed["input_tokens"], output_tokens=billed["output_tokens"])
            provider = {"gemini": "google", "messages": "anthropic", "bedrock": "aws"}.get(call["api"], "openai")
            # What the server billed, at full input rates (no cache discount), fits the reservation.
            assert prices.cost(call["name"], usage, provider).total <= reserved, (
                s,
                call,
                billed,
                json.dumps(llm.requests[-1].body)[:300],
            )
        total = sum((Decimal(c["cost_usd"]) for c in calls if c.get("cost_usd")), Decimal(0))
        assert total <= Decimal(s["budget"])
