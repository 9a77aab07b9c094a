"""LiteLLM's completion/acompletion are guarded too: it sends through the openai SDK's HTTP client."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
litellm = pytest.importorskip("litellm") if not os.environ.get("CI") else __import__("litellm")

import wflo  # noqa: E402
from wflo import _config  # noqa: E402
from wflo.testing import LLMServer, Reply  # noqa: E402


# LiteLLM's own import-time and typing warnings (not ours), kept out of this test only.
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
def test_litellm_completion_and_acompletion_are_priced_and_bounded(configured: str) -> None:
    with LLMServer() as llm:
        llm.script(Reply("sync", input_tokens=10, output_tokens=1), Reply("async", input_tokens=20, output_tokens=1))

        @wflo.workflow(name="lite", budget=wflo.Budget(usd="1"))
        def lite() -> list[str]:
            a = litellm.completion(
                model="openai/gpt-4o-mini",
                api_base=llm.openai_url,
                api_key="t",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=20,
            )

            async def other() -> str:
                r = await litellm.acompletion(
                    model="openai/gpt-4o-mini",
                    api_base=llm.openai_url,
                    api_key="t",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=20,
                )
                return r.choices[0].message.content

            return [a.choices[0].message.content, asyncio.run(other())]

        assert lite.options(id="lite").run() == ["sync", "async"]
        calls = [
            e.data for e in _config.get_store().events("lite") if e.type == "call.completed" and e.data["kind"] == "llm"
        ]
        assert [c["usage"]["input_tokens"] for c in calls] == [10, 20]
        assert all(Decimal(c["cost_usd"]) > 0 for c in calls)

        @wflo.workflow(name="lite-unknown", budget=wflo.Budget(usd="1"))
        def unknown() -> None:
            litellm.completion(
                model="openai/not-a-real-model-xyz",
                api_base=llm.openai_url,
                api_key="t",
                messages=[{"role": "user", "content": "hi"}],
            )

        before = llm.request_count
        with pytest.raises(Exception):  # noqa: B017 - LiteLLM maps the SDK's errors to its own types
            unknown.run()
        assert llm.request_count == before  # refused before anything was sent
        failed = [
            e.data
            for e in _config.get_store().list_runs(workflow="lite-unknown")
            and _config.get_store().events(_config.get_store().list_runs(workflow="lite-unknown")[0].id)
            if e.type == "call.failed"
        ]
        assert failed and failed[0]["error"]["type"] == "UnknownPriceError"


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
def test_litellm_refusal_reaches_agent_code_as_budget_exceeded(configured: str) -> None:
    # On main this surfaced as litellm.InternalServerError: a budget stop looked like an outage.
    with LLMServer() as llm:

        @wflo.workflow(name="lite-broke", budget=wflo.Budget(usd="0.0000001"))
        def broke() -> list[str]:
            caught = []
            for call in (litellm.completion, litellm.text_completion):
                try:
                    kwargs = (
                        {"prompt": "hi"}
                        if call is litellm.text_completion
                        else {"messages": [{"role": "user", "content": "hi"}]}
                    )
                    call(model="openai/gpt-4o-mini", api_base=llm.openai_url, api_key="t", max_tokens=20, **kwargs)
                except wflo.BudgetExceededError as exc:
                    caught.append(exc.scope)

            async def other() -> None:
                await litellm.acompletion(
                    model="openai/gpt-4o-mini", api_base=llm.openai_url, api_key="t",
                    messages=[{"role": "user", "content": "hi"}], max_tokens=20,
                )  # fmt: skip

            try:
                asyncio.run(other())
            except wflo.BudgetExceededError as exc:
                caught.append(exc.scope)
            return caught

        assert broke.options(id="lite-broke").run() == ["run:lite-broke"] * 3
        assert llm.request_count == 0


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
def test_litellm_text_completion_is_guarded(configured: str) -> None:
    with LLMServer() as llm:
        llm.script(Reply("done", input_tokens=9, output_tokens=1))

        @wflo.workflow(name="lite-text", budget=wflo.Budget(usd="1"))
        def text() -> str:
            r = litellm.text_completion(
                model="openai/gpt-3.5-turbo-instruct", api_base=llm.openai_url, api_key="t", prompt="say", max_tokens=5
            )
            return str(r.choices[0].text)

        assert text.options(id="lite-text").run() == "done"
        calls = [e.data for e in _config.get_store().events("lite-text") if e.type == "call.completed"]
        assert [c["api"] for c in calls] == ["completions"]
        assert calls[0]["usage"]["input_tokens"] == 9
        assert Decimal(calls[0]["cost_usd"]) <= Decimal(calls[0]["reserved_usd"])
