"""P1 and P3 on the LLM-call paths, tried the way a careless user or a hostile agent would:
streams left unread, calls cancelled mid-flight, redirects, partial stream usage. Through the
real openai/anthropic SDKs (and aiohttp), over HTTP, against wflo.testing's server, on both
stores. Each test failed before the change it came with."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import anthropic
import httpx
import openai
import pytest
from budget_helpers import llm_events

import wflo
from wflo import _config
from wflo.cost._api import ledger
from wflo.cost._spend import book_and_journal
from wflo.testing import LLMServer, Reply

MSG = [{"role": "user", "content": "hi"}]


def _oai(llm: LLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)


def _settled(run_id: str) -> Decimal:
    """What the run spent; asserts nothing of it is still held, and the spend book agrees
    with the journal."""
    usage = ledger().scope_usage(f"run:{run_id}")
    assert usage is not None and usage.reserved == 0, usage
    assert ledger().open_reservations() == 0
    (spend,) = list(book_and_journal(_config.get_store(), run_id=run_id))
    assert {m: s.figures() for m, s in spend.book.items()} == {m: s.figures() for m, s in spend.journal.items()}
    return usage.spent


def _types(run_id: str) -> list[str]:
    return [e.type for e in _config.get_store().events(run_id)]


# ----------------------------------------------------------------------------- streams left open
@pytest.mark.parametrize("ending", ["break", "raise"])
def test_stream_left_unread_is_settled_before_the_run_ends(configured: str, llm: LLMServer, ending: str) -> None:
    # The caller reads one chunk and leaves the loop (or its own code fails there), never
    # closing the stream. Before: the run ended with the reservation still held, no record of
    # the call, and the record written after the run's end (LeaseLost) when the stream was
    # collected.
    llm.script(Reply("w " * 200, input_tokens=100, output_tokens=200, chunk_delay=0.005))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> str:
        stream = _oai(llm).chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True, max_tokens=300)
        for _ in stream:
            if ending == "raise":
                raise ValueError("a bug in the caller's loop")
            break
        return "done"

    run_id = f"left-{ending}"
    if ending == "raise":
        with pytest.raises(ValueError, match="a bug"):
            flow.options(id=run_id).run()
    else:
        assert flow.options(id=run_id).run() == "done"
    (call,) = llm_events(run_id)
    assert call["cost_estimated"] == "reservation" and call["cost_usd"] == call["reserved_usd"]
    types = _types(run_id)
    assert types.index("call.completed") < types.index("run.failed" if ending == "raise" else "run.completed")
    assert _settled(run_id) == Decimal(call["reserved_usd"])


def test_async_stream_left_unread_is_settled_before_the_run_ends(configured: str, llm: LLMServer) -> None:
    llm.script(
        Reply("w " * 100, output_tokens=100, chunk_delay=0.005),
        Reply("v " * 100, output_tokens=100, chunk_delay=0.005),
    )

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    async def flow() -> str:
        # The clients are not closed either: the run's end closes the two streams' connections.
        client = openai.AsyncOpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
        claude = anthropic.AsyncAnthropic(base_url=llm.anthropic_url, api_key="t", max_retries=0)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True, max_tokens=200)
        async for _ in stream:
            break
        other = await claude.messages.create(model="claude-haiku-4-5", max_tokens=200, messages=MSG, stream=True)
        async for _ in other:
            break
        return "done"

    assert flow.options(id="left-async").run() == "done"
    calls = llm_events("left-async")
    assert len(calls) == 2 and all(c["cost_usd"] == c["reserved_usd"] for c in calls)
    assert _settled("left-async") == sum(Decimal(c["reserved_usd"]) for c in calls)


def test_anthropic_stream_cut_after_message_start_is_charged_at_its_reservation(
    configured: str, llm: LLMServer
) -> None:
    # message_start reports the input and 1 output token; the output is counted in
    # message_delta at the end. Before: a stream left after message_start was charged for the
    # input and one output token, whatever the model went on to generate.
    llm.script(Reply("w " * 150, input_tokens=20, output_tokens=150, chunk_delay=0.005))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> None:
        client = anthropic.Anthropic(base_url=llm.anthropic_url, api_key="t", max_retries=0)
        with client.messages.stream(model="claude-haiku-4-5", max_tokens=200, messages=MSG) as stream:
            for _ in stream:
                break

    flow.options(id="claude-cut").run()
    (call,) = llm_events("claude-cut")
    assert call["cost_estimated"] == "reservation" and call["cost_usd"] == call["reserved_usd"]
    assert _settled("claude-cut") == Decimal(call["reserved_usd"])


# ----------------------------------------------------------------------------- cancellation
def test_cancelled_calls_are_charged_at_their_reservation_not_held(configured: str, llm: LLMServer) -> None:
    # asyncio.wait_for's timeout and task.cancel() cut two calls off after they were sent.
    # Before: no record, and both reservations held after the run ended (until they expired).
    llm.responder = lambda request: Reply("slow", output_tokens=1, delay=1.5)

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    async def flow() -> str:
        async with openai.AsyncOpenAI(base_url=llm.openai_url, api_key="t", max_retries=0) as client:
            create = client.chat.completions.create
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(create(model="gpt-4o-mini", messages=MSG, max_tokens=50), 0.3)
            task = asyncio.create_task(create(model="gpt-4o-mini", messages=MSG, max_tokens=50))
            while llm.request_count < 2:
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return "went on"

    assert flow.options(id="cancelled").run() == "went on"
    lost = [e.data for e in _config.get_store().events("cancelled") if e.type == "budget.unknown_outcome"]
    assert [e["unknown_outcome"] for e in lost] == ["cancelled", "cancelled"]
    assert not llm_events("cancelled")  # no result: a replay would make them again
    assert _settled("cancelled") == sum(Decimal(e["cost_usd"]) for e in lost) > 0


def test_tight_budget_under_gather_with_timeouts_never_overspends(configured: str, llm: LLMServer) -> None:
    # Half the calls time out; the limit still holds and nothing stays held.
    llm.responder = lambda r: Reply("w " * 40, output_tokens=40, delay=0.6 if "slow" in str(r.body) else 0.0)

    @wflo.workflow(budget=wflo.Budget(usd="0.0004"), guards=wflo.LoopGuard(max_same_error=None))
    async def flow() -> list[str]:
        async with openai.AsyncOpenAI(base_url=llm.openai_url, api_key="t", max_retries=0) as client:
            return await asyncio.gather(*[one(client, i) for i in range(30)])

    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        kind = "slow" if i % 2 else "fast"
        call = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"{kind} {i}"}], max_tokens=100
        )
        try:
            await asyncio.wait_for(call, 0.3)
            return "ok"
        except TimeoutError:
            return "timeout"
        except wflo.BudgetExceededError:
            return "refused"

    results = flow.options(id="gather").run()
    assert "refused" in results and "timeout" in results
    assert _settled("gather") <= Decimal("0.0004")


# ----------------------------------------------------------------------------- redirects
@pytest.fixture
def redirector(llm: LLMServer) -> Iterator[str]:
    """A server that answers every POST with a 307 to the LLM server's chat completions."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", llm.openai_url + "/chat/completions")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


BIG = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 100_000}


@pytest.mark.parametrize("client", ["httpx", "httpx-async", "openai", "aiohttp"])
def test_redirect_to_an_llm_endpoint_is_refused(configured: str, llm: LLMServer, redirector: str, client: str) -> None:
    # A 307 keeps the method and the body. Before: the first request (not an LLM path) went
    # out unguarded and the client followed the redirect to the chat completions endpoint:
    # sent unpriced, past a $0.000001 budget, and not journaled.
    @wflo.workflow(budget=wflo.Budget(usd="0.000001"))
    def flow() -> None:
        if client == "httpx":
            httpx.post(redirector + "/v1/go", json=BIG, follow_redirects=True)
        elif client == "openai":  # the SDK follows redirects by default
            _oai(llm).with_options(base_url=redirector + "/v1").post("/go", cast_to=httpx.Response, body=BIG)
        else:

            async def go() -> None:
                if client == "httpx-async":
                    async with httpx.AsyncClient(follow_redirects=True) as c:
                        await c.post(redirector + "/v1/go", json=BIG)
                else:
                    async with aiohttp.ClientSession() as s, s.post(redirector + "/v1/go", json=BIG):
                        pass

            asyncio.run(go())

    with pytest.raises(wflo.errors.EgressRefusedError, match="redirect"):
        flow.options(id=f"redirect-{client}").run()
    assert llm.request_count == 0


def test_redirect_of_a_guarded_request_and_outside_a_run_pass(configured: str, llm: LLMServer, redirector: str) -> None:
    llm.script(Reply("ok", input_tokens=5, output_tokens=1))
    assert httpx.post(redirector + "/v1/go", json=BIG, follow_redirects=True).status_code == 200  # no run
    wflo.egress.allow("127.0.0.1", reason="the test's gateway")
    try:

        @wflo.workflow(budget=wflo.Budget(usd="1"))
        def flow() -> int:
            return httpx.post(redirector + "/v1/go", json=BIG, follow_redirects=True).status_code

        assert flow.options(id="opted").run() == 200
    finally:
        wflo.egress.clear()
    assert "egress.opted_out" in _types("opted")
