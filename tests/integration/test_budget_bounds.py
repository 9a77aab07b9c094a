"""P1: the reservation is a true upper bound for every request shape let through, and streams
are priced on the provider's usage. Through the real openai/anthropic SDKs against
wflo.testing's server, which bills as the provider would (each case below was billed above
its reservation, or past its limit, on main before this change)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import openai
import pytest

import wflo
from wflo import _config
from wflo.cost._api import ledger
from wflo.testing import LLMServer, Reply

MSG = [{"role": "user", "content": "hi"}]
HERE = Path(__file__).parent


def run_twice(flow: str, run_id: str, store: str, llm: LLMServer, tmp: Path) -> list[subprocess.CompletedProcess[str]]:
    """Run ``egressapp``'s ``flow`` in a process that dies by SIGKILL after its calls, then resume it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(
        {"WFLO_DATABASE_URL": store, "LLMAPP_BASE": llm.url, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    )
    args = [sys.executable, str(HERE / "egressapp.py"), flow, run_id, str(tmp / "died")]
    return [subprocess.run(args, env=env, capture_output=True, text=True, timeout=60) for _ in range(2)]


@pytest.fixture
def client(llm: LLMServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
    yield c
    c.close()


def _llm(run_id: str) -> list[dict]:
    return [
        e.data
        for e in _config.get_store().events(run_id)
        if e.type in ("call.completed", "call.failed") and e.data.get("kind") == "llm"
    ]


def _held(calls: list[dict]) -> None:
    for c in calls:
        assert Decimal(c["cost_usd"]) <= Decimal(c["reserved_usd"]), c


def test_n_choices_are_reserved_and_clamped(configured: str, llm: LLMServer, client: openai.OpenAI) -> None:
    # n=8 x 100 output tokens: billed 8 x 100, where main reserved one choice.
    llm.responder = lambda r: Reply("w " * 100)

    @wflo.workflow(budget=wflo.Budget(usd="0.0015"))
    def flow() -> int:
        r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, n=8, max_tokens=1000)
        return len(r.choices)

    assert flow.options(id="n8").run() == 8
    (call,) = _llm("n8")
    assert call["bound"]["choices"] == 8
    assert call["usage"]["output_tokens"] == 8 * min(100, llm.requests[0].body["max_tokens"])
    _held([call])
    # The cap was lowered so that eight choices fit the $0.0015 limit.
    assert call["clamped"]["to"] * 8 * Decimal("0.6") / 1_000_000 <= Decimal("0.0015")
    usage = ledger().scope_usage("run:n8")
    assert usage.spent <= Decimal("0.0015") and usage.reserved == 0


def test_previous_response_id_bounded_from_the_journal(configured: str, llm: LLMServer, client: openai.OpenAI) -> None:
    # The first answer bills 20,000+ input and 500 output tokens; the second, continuing it,
    # is billed all of that again as input (main reserved the second for its own 10 words).
    llm.script(Reply("w " * 500), Reply("second"))

    @wflo.workflow(budget=wflo.Budget(usd="0.02"))
    def flow() -> str:
        first = client.responses.create(model="gpt-4o-mini", input="long " * 16_000, max_output_tokens=600)
        second = client.responses.create(
            model="gpt-4o-mini", input="and then?", previous_response_id=first.id, max_output_tokens=100
        )
        return second.output_text

    assert flow.options(id="chain").run() == "second"
    first, second = _llm("chain")
    carried = first["usage"]["input_tokens"] + first["usage"]["output_tokens"]
    assert carried > 20_000 and second["usage"]["input_tokens"] > carried
    assert second["bound"]["input_tokens"] >= carried
    _held([first, second])


def test_unknown_previous_response_id_is_refused(configured: str, llm: LLMServer, client: openai.OpenAI) -> None:
    @wflo.workflow(budget=wflo.Budget(usd="0.01"))
    def flow() -> None:
        client.responses.create(model="gpt-4o-mini", input="go on", previous_response_id="resp_elsewhere")

    with pytest.raises(wflo.errors.UnboundedRequestError, match="resp_elsewhere"):
        flow.options(id="orphan").run()
    assert llm.request_count == 0


def test_pdf_and_image_parts_are_bounded_by_the_context_window(
    configured: str, llm: LLMServer, client: openai.OpenAI
) -> None:
    pdf = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}}

    @wflo.workflow(budget=wflo.Budget(usd="0.1"))
    def flow() -> None:
        for part in (pdf, image):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": [{"type": "text", "text": "read"}, part]}],
                max_tokens=50,
            )

    flow.options(id="media").run()
    calls = _llm("media")
    assert [c["bound"]["input_tokens"] for c in calls] == [128_000, 128_000]
    _held(calls)  # the server bills 20,000 (file) and 48,169 (image) input tokens
    with pytest.raises(wflo.BudgetExceededError):  # $0.0192 + output does not fit $0.01

        @wflo.workflow(budget=wflo.Budget(usd="0.01"))
        def small() -> None:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [pdf]}])

        small.options(id="media-small").run()
    assert llm.request_count == 2


def test_media_on_a_model_of_unknown_window_is_refused(configured: str, llm: LLMServer, client: openai.OpenAI) -> None:
    wflo.cost.prices.set("my-vision-ft", input_per_mtok="1", output_per_mtok="1")
    try:

        @wflo.workflow(budget=wflo.Budget(usd="1"))
        def flow() -> None:
            content = [{"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}}]
            client.chat.completions.create(model="my-vision-ft", messages=[{"role": "user", "content": content}])

        with pytest.raises(wflo.errors.UnboundedRequestError, match="context window is unknown"):
            flow.options(id="media-unknown").run()
        assert llm.request_count == 0
    finally:
        wflo.cost.prices.clear()


def test_billed_builtin_tools_are_refused(configured: str, llm: LLMServer, client: openai.OpenAI) -> None:
    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> None:
        client.responses.create(model="gpt-4o-mini", input="news?", tools=[{"type": "web_search"}])

    with pytest.raises(wflo.errors.UnboundedRequestError, match="web_search"):
        flow.options(id="websearch").run()
    assert llm.request_count == 0


def test_anthropic_cache_writes_reserved_at_the_write_rate(configured: str, llm: LLMServer) -> None:
    text = "x" * 4000
    llm.script(Reply("ok", input_tokens=1000, cache_write_tokens=1000, output_tokens=1))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> None:
        c = anthropic.Anthropic(base_url=llm.anthropic_url, api_key="t", max_retries=0)
        try:
            c.messages.create(
                model="claude-haiku-4-5", max_tokens=10, messages=MSG,
                system=[{"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            )  # fmt: skip
        finally:
            c.close()

    flow.options(id="cachew").run()
    (call,) = _llm("cachew")
    _held([call])
    # The input bound is priced at twice the input rate (a one-hour cache write).
    assert Decimal(call["reserved_usd"]) >= call["bound"]["input_tokens"] * Decimal(2) / 1_000_000


def test_stream_without_include_usage_is_priced_on_usage_and_the_chunk_hidden(
    configured: str, llm: LLMServer, client: openai.OpenAI
) -> None:
    llm.script(Reply("a b c d", input_tokens=50, output_tokens=4))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> list[int]:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True, max_tokens=10)
        return [len(chunk.choices) for chunk in stream]  # an empty-choices chunk would show as 0

    seen = flow.options(id="nousage").run()
    assert 0 not in seen and len(seen) == 6  # role, 4 words, finish: no usage chunk
    assert llm.requests[0].body["stream_options"] == {"include_usage": True}
    (call,) = _llm("nousage")
    assert call["usage"] == {"input_tokens": 50, "output_tokens": 4, "cached_input_tokens": 0,
                             "cache_write_tokens": 0, "reasoning_tokens": 0}  # fmt: skip
    assert "cost_estimated" not in call


def test_hidden_usage_chunk_stays_hidden_on_replay(configured: str, llm: LLMServer, tmp_path: Path) -> None:
    llm.script(Reply("a b c d", input_tokens=50, output_tokens=4))
    first, second = run_twice("hidden-usage", "hidden", configured, llm, tmp_path)
    assert first.returncode == -9 and llm.request_count == 1
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == [1, 1, 1, 1, 1, 1]  # replayed: role, 4 words, finish
    assert llm.request_count == 1


def test_stream_cut_before_usage_is_charged_at_its_reservation(
    configured: str, llm: LLMServer, client: openai.OpenAI
) -> None:
    llm.script(Reply("w " * 50, abort_stream_after=5))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> None:
        try:
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True, max_tokens=100):
                pass
        except openai.APIError:
            pass

    flow.options(id="cut").run()
    (call,) = _llm("cut")
    assert call["cost_estimated"] == "reservation" and call["cost_usd"] == call["reserved_usd"]
    usage = ledger().scope_usage("run:cut")
    assert usage.spent == Decimal(call["reserved_usd"]) and usage.reserved == 0


def test_fallback_estimate_never_exceeds_the_cap(configured: str, llm: LLMServer) -> None:
    from wflo.cost._formats import BY_API, LLMRequest
    from wflo.cost._llm import fallback_cost
    from wflo.cost._prices import prices

    body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5, "stream": True}
    req = LLMRequest(BY_API["chat"], "gpt-4o-mini", "openai", "h", "/v1/chat/completions", "httpx", body)
    text = "".join(f'data: {{"choices": [{{"delta": {{"content": "{"word " * 50}"}}}}]}}\n\n' for _ in range(20))
    recorded = {"status": 200, "headers": {"content-type": "text/event-stream"}, "body": text}
    price = prices.lookup("gpt-4o-mini", "openai")
    inp = BY_API["chat"].input_tokens(req, price.context_window)
    assert (
        fallback_cost(price, req, recorded)
        == prices.cost("gpt-4o-mini", wflo.cost.Usage(input_tokens=inp, output_tokens=5), "openai").total
    )
