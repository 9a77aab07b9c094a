"""The standard library's, urllib3's and aiohttp's HTTP clients inside a guarded run: an LLM request of a
known format is understood (priced, reserved with its cap written in or lowered, journaled,
replayed after SIGKILL, a stream's usage chunk kept from a caller who did not ask for it), and
refused at the budget before it is sent. Each through the real client against wflo.testing's
server; ``import wflo`` patches none of them (the first guarded run does).

Before this change each of these requests (aiohttp's too) was refused (``EgressRefusedError``) inside a run.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import urllib3

import wflo
from wflo import _config
from wflo.cost._api import ledger
from wflo.testing import LLMServer, Reply

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


@pytest.fixture(autouse=True)
def _egress_clean() -> Iterator[None]:
    wflo.egress.clear()
    yield
    wflo.egress.clear()


def _llm(run_id: str) -> list[dict[str, Any]]:
    return [
        e.data
        for e in _config.get_store().events(run_id)
        if e.type in ("call.completed", "call.failed") and e.data.get("kind") == "llm"
    ]


def _urllib(llm: LLMServer, body: dict[str, Any], path: str = "/chat/completions") -> tuple[int, bytes]:
    req = urllib.request.Request(llm.openai_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


def _urllib3(llm: LLMServer, body: dict[str, Any], path: str = "/chat/completions") -> tuple[int, bytes]:
    with urllib3.PoolManager() as pool:
        r = pool.request("POST", llm.openai_url + path, json=body, retries=False)
        return r.status, r.data


def _urllib3_streamed(llm: LLMServer, body: dict[str, Any], path: str = "/chat/completions") -> tuple[int, bytes]:
    with urllib3.PoolManager() as pool:
        r = pool.request("POST", llm.openai_url + path, json=body, retries=False, preload_content=False)
        data = b"".join(r.stream(7))
        r.release_conn()
        return r.status, data


def _http_client(llm: LLMServer, body: dict[str, Any], path: str = "/chat/completions") -> tuple[int, bytes]:
    host, port = llm.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/v1" + path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _aiohttp(llm: LLMServer, body: dict[str, Any], path: str = "/chat/completions") -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session, session.post(llm.openai_url + path, json=body) as r:
            return r.status, await r.read()

    return asyncio.run(go())


def _aiohttp_lines(llm: LLMServer, body: dict[str, Any], path: str = "/chat/completions") -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession(base_url=llm.url) as session,
            session.post("/v1" + path, data=json.dumps(body), headers={"Content-Type": "application/json"}) as r,
        ):
            return r.status, b"".join([line async for line in r.content])

    return asyncio.run(go())


CLIENTS: dict[str, Callable[..., tuple[int, bytes]]] = {
    "aiohttp": _aiohttp,
    "aiohttp-lines": _aiohttp_lines,
    "urllib.request": _urllib,
    "urllib3": _urllib3,
    "urllib3-streamed": _urllib3_streamed,
    "http.client": _http_client,
}


@pytest.mark.parametrize("client", CLIENTS)
def test_chat_completion_guarded_clamped_and_refused(configured: str, llm: LLMServer, client: str) -> None:
    llm.script(Reply("short answer", input_tokens=10, output_tokens=2))
    send = CLIENTS[client]

    @wflo.workflow(budget=wflo.Budget(usd="0.0006"))
    def flow() -> str:
        status, data = send(llm, {**CHAT, "max_tokens": 4000})
        text = f"{status} " + str(json.loads(data)["choices"][0]["message"]["content"])
        try:
            send(llm, {**CHAT, "messages": [{"role": "user", "content": "x" * 20_000}]})
        except wflo.BudgetExceededError as exc:
            text += f" / refused on {exc.scope}"
        return text

    run_id = f"plain-{client}"
    assert flow.options(id=run_id).run() == f"200 short answer / refused on run:{run_id}"
    assert llm.request_count == 1  # the refused call never left
    call, refused = _llm(run_id)
    assert refused["error"]["type"] == "BudgetExceededError"
    assert call["api"] == "chat" and (call["usage"]["input_tokens"], call["usage"]["output_tokens"]) == (10, 2)
    assert llm.requests[0].body["max_tokens"] == call["clamped"]["to"] < 4000  # the cap lowered on the wire
    assert Decimal(call["cost_usd"]) <= Decimal(call["reserved_usd"])
    usage = ledger().scope_usage(f"run:{run_id}")
    assert usage.reserved == 0 and usage.spent == Decimal(call["cost_usd"])


@pytest.mark.parametrize("client", CLIENTS)
def test_stream_usage_asked_for_and_hidden(configured: str, llm: LLMServer, client: str) -> None:
    llm.script(Reply("a b", input_tokens=5, output_tokens=2))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> list[str]:
        _, data = CLIENTS[client](llm, {**CHAT, "stream": True})
        return [line for line in data.decode().splitlines() if line]

    lines = flow.options(id="plain-stream").run()
    assert lines[-1] == "data: [DONE]" and not any('"usage"' in line for line in lines)
    assert llm.requests[0].body["stream_options"] == {"include_usage": True}
    (call,) = _llm("plain-stream")
    assert call["usage"]["output_tokens"] == 2 and "cost_estimated" not in call


@pytest.mark.parametrize("client", ["urllib.request", "http.client", "aiohttp"])
def test_anthropic_messages_guarded(configured: str, llm: LLMServer, client: str) -> None:
    llm.script(Reply("hello", input_tokens=12, output_tokens=3))
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> str:
        _, data = CLIENTS[client](llm, body, "/messages")
        return str(json.loads(data)["content"][0]["text"])

    assert flow.options(id="plain-messages").run() == "hello"
    (call,) = _llm("plain-messages")
    assert call["api"] == "messages" and call["usage"]["input_tokens"] == 12
    assert Decimal(call["cost_usd"]) > 0


def test_unpriced_endpoint_still_refused(configured: str, llm: LLMServer) -> None:
    wflo.egress.register(llm.url)

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> None:
        _urllib(llm, {"prompt": "otter"}, "/images/generations")

    with pytest.raises(wflo.errors.EgressRefusedError) as info:
        flow.options(id="plain-images").run()
    assert llm.request_count == 0 and info.value.client == "urllib.request"


def test_calls_replayed_after_sigkill(configured: str, llm: LLMServer, tmp_path: Path) -> None:
    from test_budget_bounds import run_twice

    llm.script(*(Reply(f"answer {i}", input_tokens=20, output_tokens=2) for i in range(4)))
    first, second = run_twice("plain-replay", "plain-kill", configured, llm, tmp_path)
    assert first.returncode == -9 and llm.request_count == 4
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == ["answer 0", "answer 1", "answer 2", "answer 3"]
    assert llm.request_count == 4  # all four answered by the journal


def test_importing_wflo_patches_no_http_client(tmp_path: Path) -> None:
    """``import wflo`` (and its CLI and test server) leaves every HTTP client as it was; the
    first guarded run installs the interception."""
    code = """
import http.client, sys, urllib.request
import aiohttp, botocore.client, httpx, requests.adapters, urllib3
def seen():
    return [httpx.Client.send, httpx.AsyncClient.send, http.client.HTTPConnection.putrequest,
            http.client.HTTPConnection.request, http.client.HTTPConnection.getresponse,
            urllib3.HTTPConnectionPool.urlopen, requests.adapters.HTTPAdapter.send,
            aiohttp.ClientSession._request, botocore.client.BaseClient._make_api_call,
            urllib.request.OpenerDirector.open]
before, meta = seen(), list(sys.meta_path)
import wflo, wflo.cli, wflo.testing
assert [a is b for a, b in zip(before, seen())] == [True] * len(before), "patched at import"
assert sys.meta_path == meta, "import hook added at import"
wflo.configure(database="sqlite:///" + sys.argv[1])
@wflo.workflow(name="first")
def first():
    return 1
first.run()
after = seen()
print([a is not b for a, b in zip(before, after)])
"""
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "w.db")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    # All wrapped by the first run but urllib.request's opener (it sends through http.client).
    assert json.loads(proc.stdout.strip().lower()) == [True] * 9 + [False]
