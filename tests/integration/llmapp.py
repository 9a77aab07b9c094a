"""Agents for the budget tests: unchanged OpenAI/Anthropic SDK code inside wflo workflows."""

from __future__ import annotations

import os
import signal

import anthropic
import openai

import wflo

BASE = os.environ.get("LLMAPP_BASE", "http://127.0.0.1:1")


def oai() -> openai.OpenAI:
    return openai.OpenAI(base_url=BASE + "/v1", api_key="test", max_retries=0)


@wflo.step
def maybe_die(marker: str) -> None:
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)


@wflo.workflow(name="three-calls", budget=wflo.Budget(usd="1.00"))
def three_calls(marker: str) -> list[str]:
    client = oai()
    out = []
    for i in range(3):
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=50
        )
        out.append(reply.choices[0].message.content)
        if i == 1:
            maybe_die(marker)
    return out


@wflo.workflow(name="tenant-calls")
def tenant_calls(n: int) -> int:
    client = oai()
    done = 0
    with wflo.scope(tenant="race"):
        for i in range(n):
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"hello there {i} " * 20}],
                    max_tokens=200,
                )
                done += 1
            except wflo.BudgetExceededError:
                break  # the tenant's money is gone (retrying the same refusal would be a runaway)
    return done


@wflo.workflow(name="claude")
def claude() -> str:
    client = anthropic.Anthropic(base_url=BASE, api_key="test", max_retries=0)
    msg = client.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    return msg.content[0].text


@wflo.workflow(name="spend-rate", budget=wflo.Budget(usd="1.00"), guards=wflo.LoopGuard(max_spend_rate="0.008/min"))
def spend_rate(marker: str) -> int:
    """Up to six calls of ~$0.003 each; killed (SIGKILL) after the second, once."""
    client = oai()
    for i in range(6):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=50
        )
        if i == 1:
            maybe_die(marker)
    return 6
