"""Workflows for the replay tests of test_budget_bounds/test_budget_egress: each makes its LLM
calls, then dies by SIGKILL the first time (a marker file says whether it already did)."""

from __future__ import annotations

import json
import os
import signal
import sys

import boto3
import botocore.config
import openai

import wflo

BASE = os.environ.get("LLMAPP_BASE", "http://127.0.0.1:1")


@wflo.step
def maybe_die(marker: str) -> None:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)


@wflo.workflow(name="hidden-usage", budget=wflo.Budget(usd="1"))
def hidden_usage(marker: str) -> list[int]:
    client = openai.OpenAI(base_url=BASE + "/v1", api_key="t", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=10
    )
    seen = [len(chunk.choices) for chunk in stream]  # a usage-only chunk would show as 0
    maybe_die(marker)
    return seen


@wflo.workflow(name="bedrock-replay", budget=wflo.Budget(usd="1"))
def bedrock_replay(marker: str) -> str:
    client = boto3.client(
        "bedrock-runtime", endpoint_url=BASE, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )  # fmt: skip
    r = client.converse(
        modelId="anthropic.claude-3-haiku-20240307-v1:0",
        messages=[{"role": "user", "content": [{"text": "hi"}]}],
        inferenceConfig={"maxTokens": 20},
    )
    maybe_die(marker)
    return str(r["output"]["message"]["content"][0]["text"])


@wflo.workflow(name="requests-replay", budget=wflo.Budget(usd="1"))
def requests_replay(marker: str) -> str:
    import requests

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    r = requests.post(BASE + "/v1/chat/completions", json=body, timeout=10)
    maybe_die(marker)
    return str(r.json()["choices"][0]["message"]["content"])


def _plain(client: str) -> str:
    """One chat completion through ``client`` (urllib.request, urllib3, http.client or aiohttp)."""
    import http.client
    import urllib.request

    import urllib3

    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20})
    if client == "urllib.request":
        req = urllib.request.Request(BASE + "/v1/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
    elif client == "aiohttp":
        import asyncio

        import aiohttp

        async def go() -> bytes:
            async with aiohttp.ClientSession() as session, session.post(BASE + "/v1/chat/completions", data=body) as r:
                return await r.read()

        data = asyncio.run(go())
    elif client == "urllib3":
        data = urllib3.request("POST", BASE + "/v1/chat/completions", body=body, retries=False).data
    else:
        host, port = BASE.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        data = conn.getresponse().read()
        conn.close()
    return str(json.loads(data)["choices"][0]["message"]["content"])


@wflo.workflow(name="plain-replay", budget=wflo.Budget(usd="1"))
def plain_replay(marker: str) -> list[str]:
    answers = [_plain(client) for client in ("urllib.request", "urllib3", "http.client", "aiohttp")]
    maybe_die(marker)
    return answers


if __name__ == "__main__":
    flows = {"hidden-usage": hidden_usage, "bedrock-replay": bedrock_replay, "requests-replay": requests_replay,
             "plain-replay": plain_replay}  # fmt: skip
    flow = flows[sys.argv[1]]
    print(json.dumps(flow.options(id=sys.argv[2]).run(sys.argv[3])))
