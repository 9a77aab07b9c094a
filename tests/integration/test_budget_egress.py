"""P1's closed world: inside a guarded run, every request to an LLM provider, from any HTTP
client, is understood (priced, reserved, journaled, replayed) or refused before it is sent.

Each client is the real library, over HTTP, against wflo.testing's server (which counts what
reached it). On main before this change every refused case below reached the server.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import boto3
import botocore.config
import httpx
import openai
import pytest
import requests
import urllib3

import wflo
from wflo import _config
from wflo._errors import BudgetError
from wflo.cost._api import ledger
from wflo.testing import LLMServer, Reply

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


@pytest.fixture(autouse=True)
def _egress_clean() -> Iterator[None]:
    wflo.egress.clear()
    yield
    wflo.egress.clear()


def _events(run_id: str, kind: str | None = None) -> list[dict]:
    return [e.data | {"_type": e.type} for e in _config.get_store().events(run_id) if kind is None or e.type == kind]


def _llm(run_id: str) -> list[dict]:
    return [e for e in _events(run_id) if e["_type"] in ("call.completed", "call.failed") and e.get("kind") == "llm"]


def _bedrock(llm: LLMServer) -> object:
    return boto3.client(
        "bedrock-runtime", endpoint_url=llm.url, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )  # fmt: skip


# ----------------------------------------------------------------------------- refused
def _send_requests(llm: LLMServer) -> None:
    wflo.egress.register(llm.url)  # an endpoint wflo cannot price, on a registered provider
    requests.post(llm.openai_url + "/images/generations", json={"prompt": "otter"}, timeout=5)


# urllib.request, urllib3 and http.client guard the formats wflo understands (test_budget_clients);
# an endpoint wflo cannot price, on a registered provider, they refuse.
def _send_urllib(llm: LLMServer) -> None:
    wflo.egress.register(llm.url)
    req = urllib.request.Request(
        llm.openai_url + "/images/generations",
        data=json.dumps({"prompt": "otter"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=5).close()


def _send_urllib3(llm: LLMServer) -> None:
    wflo.egress.register(llm.url)
    with urllib3.PoolManager() as pool:
        pool.request("POST", llm.openai_url + "/images/generations", json={"prompt": "otter"}, retries=False)


def _send_http_client(llm: LLMServer) -> None:
    host, port = llm.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:  # written piece by piece: its body is not known when the request line is
        conn.putrequest("POST", "/v1/messages")
        conn.putheader("Content-Type", "application/json")
        conn.endheaders(json.dumps(CHAT).encode())
        conn.getresponse().read()
    finally:
        conn.close()


def _send_aiohttp(llm: LLMServer) -> None:
    wflo.egress.register(llm.url)

    async def go() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(llm.openai_url + "/images/generations", json={"prompt": "otter"}) as r,
        ):
            await r.read()

    asyncio.run(go())


def _send_bedrock_invoke(llm: LLMServer) -> None:
    _bedrock(llm).invoke_model(modelId="amazon.nova-micro-v1:0", body=b"{}")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("client", "send", "path"),
    [
        ("requests", _send_requests, "/v1/images/generations"),
        ("urllib.request", _send_urllib, "/v1/images/generations"),
        ("urllib3", _send_urllib3, "/v1/images/generations"),
        ("http.client", _send_http_client, "/v1/messages"),
        ("aiohttp", _send_aiohttp, "/v1/images/generations"),
        ("botocore", _send_bedrock_invoke, "/InvokeModel"),
    ],
)
def test_other_clients_are_refused_before_sending(
    configured: str, llm: LLMServer, client: str, send, path: str
) -> None:
    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> None:
        send(llm)

    with pytest.raises(wflo.errors.EgressRefusedError) as info:
        flow.options(id=f"other-{client}").run()
    assert llm.request_count == 0  # nothing reached the provider
    err = info.value
    assert isinstance(err, BudgetError)
    assert (err.client, err.path) == (client, path) and err.host == "127.0.0.1"
    assert "wflo.egress.allow('127.0.0.1'" in str(err) and client in str(err)


@pytest.mark.parametrize("client", ["requests", "urllib.request", "aiohttp", "httpx"])
def test_real_provider_hosts_refused_before_any_connection(
    configured: str, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    # No name lookup may happen: were the gate to let the request through, it would fail on
    # this instead of reaching the network.
    def no_network(*args: object, **kwargs: object) -> object:
        raise OSError("the test forbids name lookups")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    # Every client guards chat completions (they would be sent); an unpriced endpoint is refused.
    path = "/v1/images/generations"
    url = "https://api.openai.com" + path

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> None:
        if client == "requests":
            requests.post(url, json=CHAT, timeout=5)
        elif client == "urllib.request":
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=5)
        elif client == "aiohttp":

            async def go() -> None:
                async with aiohttp.ClientSession() as session, session.post(url, json={"prompt": "otter"}) as r:
                    await r.read()

            asyncio.run(go())
        else:
            with httpx.Client() as c:
                c.post(url, json={"prompt": "otter"})

    with pytest.raises(wflo.errors.EgressRefusedError) as info:
        flow.options(id=f"real-{client}").run()
    assert info.value.host == "api.openai.com" and info.value.client == client


def test_unpriced_endpoint_of_a_provider_refused_through_httpx(configured: str, llm: LLMServer) -> None:
    wflo.egress.register(llm.openai_url)  # a local OpenAI-compatible server, registered as a provider

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> int:
        client = httpx.Client(base_url=llm.openai_url)
        try:
            assert client.get("/models").status_code == 404  # reads bill nothing: they pass
            client.post("/images/generations", json={"model": "gpt-image-1", "prompt": "otter"})
        finally:
            client.close()
        return 0

    with pytest.raises(wflo.errors.EgressRefusedError) as info:
        flow.options(id="images").run()
    assert [r.path for r in llm.requests] == []  # the GET is not an LLM request; the POST never left
    assert info.value.path == "/v1/images/generations" and info.value.client == "httpx"


def test_opt_out_lets_a_host_through_and_is_recorded(configured: str, llm: LLMServer) -> None:
    wflo.egress.allow("127.0.0.1", reason="local test server")

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> int:
        with pytest.raises(urllib.error.HTTPError):  # the test server has no image endpoint: 404
            _send_urllib(llm)  # refused without the opt-out (see above)
        return llm.request_count

    assert flow.options(id="optout").run() == 1
    (ev,) = _events("optout", "egress.opted_out")
    assert ev["client"] == "urllib.request" and ev["host"] == "127.0.0.1" and ev["reason"] == "local test server"
    assert _llm("optout") == []  # passed unguarded: no LLM call on the record, only the opt-out


def test_opt_out_by_setting(configured: str, llm: LLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WFLO_EGRESS_ALLOW", "example.invalid, 127.0.0.1")
    wflo.configure(database=configured)  # settings are read when built

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> int:
        _send_urllib3(llm)
        return llm.request_count

    assert flow.options(id="optout-env").run() == 1
    (ev,) = _events("optout-env", "egress.opted_out")
    assert ev["reason"] == "opted out with the egress_allow setting (WFLO_EGRESS_ALLOW)"


def test_outside_a_run_nothing_is_gated(llm: LLMServer) -> None:
    assert requests.post(llm.openai_url + "/chat/completions", json=CHAT, timeout=5).status_code == 200


def test_known_provider_hosts_are_providers() -> None:
    eg = wflo.egress
    for host in ("api.openai.com", "myres.openai.azure.com", "api.anthropic.com", "generativelanguage.googleapis.com",
                 "us-central1-aiplatform.googleapis.com", "bedrock-runtime.eu-west-1.amazonaws.com", "api.mistral.ai",
                 "api.groq.com", "api.together.xyz", "api.fireworks.ai", "openrouter.ai", "api.deepseek.com",
                 "api.x.ai", "api.cohere.com"):  # fmt: skip
        assert eg.provider_for(host, 443, "/anything") is not None, host
    assert eg.provider_for("example.com", 443, "/v1/chat") is None


# ----------------------------------------------------------------------------- understood
def test_requests_chat_completion_guarded_clamped_and_refused(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("short answer", input_tokens=10, output_tokens=2))
    url = llm.openai_url + "/chat/completions"

    @wflo.workflow(budget=wflo.Budget(usd="0.0006"))
    def flow() -> str:
        r = requests.post(url, json={**CHAT, "max_tokens": 4000}, timeout=5)
        text = str(r.json()["choices"][0]["message"]["content"])
        try:
            requests.post(url, json={**CHAT, "messages": [{"role": "user", "content": "x" * 20_000}]}, timeout=5)
        except wflo.BudgetExceededError as exc:
            text += f" / refused on {exc.scope}"
        return text

    assert flow.options(id="req").run() == "short answer / refused on run:req"
    assert llm.request_count == 1
    call, refused = _llm("req")
    assert refused["error"]["type"] == "BudgetExceededError"
    assert call["api"] == "chat" and call["usage"]["input_tokens"] == 10
    assert llm.requests[0].body["max_tokens"] == call["clamped"]["to"] < 4000
    assert Decimal(call["cost_usd"]) <= Decimal(call["reserved_usd"])


def test_requests_call_replayed_after_sigkill(configured: str, llm: LLMServer, tmp_path: Path) -> None:
    from test_budget_bounds import run_twice

    llm.script(Reply("once", input_tokens=20, output_tokens=1))
    first, second = run_twice("requests-replay", "req-kill", configured, llm, tmp_path)
    assert first.returncode == -9 and llm.request_count == 1
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == "once" and llm.request_count == 1  # answered by the journal


def test_requests_stream_usage_hidden(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("a b", input_tokens=5, output_tokens=2))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> list[str]:
        r = requests.post(llm.openai_url + "/chat/completions", json={**CHAT, "stream": True}, timeout=5, stream=True)
        return [line.decode() for line in r.iter_lines() if line]

    lines = flow.options(id="req-stream").run()
    assert lines[-1] == "data: [DONE]" and not any('"usage"' in line for line in lines)
    (call,) = _llm("req-stream")
    assert call["usage"]["output_tokens"] == 2 and "cost_estimated" not in call


def test_legacy_completions_and_embeddings_are_guarded(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("a b c", input_tokens=10), Reply(input_tokens=7))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> tuple[str, int]:
        client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
        try:
            text = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say", max_tokens=5).choices[0].text
            vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"]).data
        finally:
            client.close()
        return text, len(vectors)

    assert flow.options(id="legacy").run() == ("a b c", 2)
    calls = _llm("legacy")
    assert [c["api"] for c in calls] == ["completions", "embeddings"]
    assert [c["usage"]["input_tokens"] for c in calls] == [10, 7]
    assert all(Decimal(c["cost_usd"]) <= Decimal(c["reserved_usd"]) for c in calls)
    assert ledger().scope_usage("run:legacy").reserved == 0


def test_legacy_completion_default_cap_and_refusal(configured: str, llm: LLMServer) -> None:
    @wflo.workflow(budget=wflo.Budget(usd="0.00001"))
    def flow() -> None:
        client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
        try:
            client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x" * 400, n=4, max_tokens=500)
        finally:
            client.close()

    with pytest.raises(wflo.BudgetExceededError):
        flow.options(id="legacy-refused").run()
    assert llm.request_count == 0


def test_gemini_generate_content_guarded_through_httpx(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("bonjour", input_tokens=12, output_tokens=1, reasoning_tokens=5))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> str:
        with httpx.Client() as client:
            r = client.post(
                f"{llm.gemini_url}/models/gemini-2.0-flash:generateContent",
                json={"contents": [{"role": "user", "parts": [{"text": "hello"}]}]},
            )
        return str(r.json()["candidates"][0]["content"]["parts"][0]["text"])

    assert flow.options(id="gemini").run() == "bonjour"
    (call,) = _llm("gemini")
    assert call["api"] == "gemini" and call["provider"] == "google" and call["name"] == "gemini-2.0-flash"
    assert call["usage"]["input_tokens"] == 12 and call["usage"]["output_tokens"] == 6
    assert call["cap_added"] == {"field": "generationConfig.maxOutputTokens", "value": 4096}
    assert llm.requests[0].body["generationConfig"]["maxOutputTokens"] == 4096
    assert Decimal(call["cost_usd"]) <= Decimal(call["reserved_usd"])


def test_bedrock_converse_guarded_clamped_and_replayed(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("hola", input_tokens=20, output_tokens=1), Reply("otra", input_tokens=20, output_tokens=1))
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    converse = {"modelId": model, "messages": [{"role": "user", "content": [{"text": "hi"}]}]}

    @wflo.workflow(budget=wflo.Budget(usd="0.003"))
    def flow() -> list[str]:
        client = _bedrock(llm)
        first = client.converse(**converse, inferenceConfig={"maxTokens": 100_000})  # type: ignore[attr-defined]
        second = client.converse(**converse)  # type: ignore[attr-defined]
        return [r["output"]["message"]["content"][0]["text"] for r in (first, second)]

    assert flow.options(id="bedrock").run() == ["hola", "otra"]
    first, second = _llm("bedrock")
    assert first["api"] == "bedrock" and first["provider"] == "aws" and first["name"] == model
    assert first["clamped"]["field"] == "inferenceConfig.maxTokens"
    assert llm.requests[0].body["inferenceConfig"]["maxTokens"] == first["clamped"]["to"] < 100_000
    assert second["cap_added"] == {"field": "inferenceConfig.maxTokens", "value": 4096} or second.get("clamped")
    assert first["usage"]["input_tokens"] == 20 and Decimal(first["cost_usd"]) > 0
    usage = ledger().scope_usage("run:bedrock")
    assert usage.reserved == 0 and usage.spent <= Decimal("0.003")


def test_bedrock_converse_replayed_after_sigkill(configured: str, llm: LLMServer, tmp_path: Path) -> None:
    from test_budget_bounds import run_twice

    llm.script(Reply("hola", input_tokens=20, output_tokens=1))
    first, second = run_twice("bedrock-replay", "bedrock-kill", configured, llm, tmp_path)
    assert first.returncode == -9 and llm.request_count == 1
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == "hola" and llm.request_count == 1  # answered by the journal
