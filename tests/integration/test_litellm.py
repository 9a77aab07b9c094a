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
