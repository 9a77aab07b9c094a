"""P1 through the real openai/anthropic SDKs, over HTTP, against wflo.testing's server."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import anthropic
import genai_prices
import openai
import pytest

import wflo
from wflo import _config
from wflo.cost._api import ledger
from wflo.testing import LLMServer, Reply

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def _price(model: str, provider: str, **usage: int) -> Decimal:
    calc = genai_prices.calc_price(genai_prices.Usage(**usage), model_ref=model, provider_id=provider)
    return Decimal(calc.total_price)


def _llm_events(run_id: str) -> list[dict]:
    return [
        e.data
        for e in _config.get_store().events(run_id)
        if e.type in ("call.completed", "call.failed") and e.data["kind"] == "llm"
    ]


def _client(llm: LLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)


def test_cost_recorded_per_call_equals_reported_usage(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("one two three", input_tokens=1200, output_tokens=3))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> str:
        r = _client(llm).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        return r.choices[0].message.content

    assert flow.options(id="cost-1").run() == "one two three"
    (event,) = _llm_events("cost-1")
    assert event["usage"]["input_tokens"] == 1200 and event["usage"]["output_tokens"] == 3
    assert Decimal(event["cost_usd"]) == _price("gpt-4o-mini", "openai", input_tokens=1200, output_tokens=3)
    assert event["price_source"] == "genai-prices"
    assert ledger().scope_usage("run:cost-1").spent == Decimal(event["cost_usd"])


def test_unknown_model_refused_before_any_request(configured: str, llm: LLMServer) -> None:
    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> None:
        _client(llm).chat.completions.create(
            model="my-secret-finetune-9000", messages=[{"role": "user", "content": "hi"}]
        )

    with pytest.raises(wflo.errors.UnknownPriceError, match="my-secret-finetune-9000"):
        flow.run()
    assert llm.request_count == 0


def test_user_price_makes_unknown_model_usable(configured: str, llm: LLMServer) -> None:
    from wflo.cost import prices

    prices.set("acme-ft-1", input_per_mtok="1.00", output_per_mtok="2.00")
    llm.script(Reply("ok", input_tokens=1000, output_tokens=1000))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> None:
        _client(llm).chat.completions.create(model="acme-ft-1", messages=[{"role": "user", "content": "hi"}])

    flow.options(id="ft").run()
    assert Decimal(_llm_events("ft")[0]["cost_usd"]) == Decimal("0.003")


def test_budget_allows_two_calls_and_refuses_the_third_before_sending(configured: str, llm: LLMServer) -> None:
    # Each call: ~input estimate + max_tokens=1000 output at $0.60/MTok → worst case ≈ $0.0006;
    # the real cost is much lower, so spend is driven by reservations, then settlement.
    for _ in range(3):
        llm.script(Reply("word " * 1000, input_tokens=10, output_tokens=1000))

    @wflo.workflow(budget=wflo.Budget(usd="0.00121"))
    def flow() -> int:
        client = _client(llm)
        n = 0
        for _ in range(3):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], max_tokens=1000
            )
            n += 1
        return n

    with pytest.raises(wflo.BudgetExceededError) as info:
        flow.options(id="two").run()
    assert llm.request_count == 2
    assert info.value.scope == "run:two"
    usage = ledger().scope_usage("run:two")
    assert usage.spent <= Decimal("0.00121") and usage.reserved == 0


def test_max_tokens_clamped_to_fit_the_remaining_budget(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("short answer", input_tokens=10, output_tokens=2))

    @wflo.workflow(budget=wflo.Budget(usd="0.0003"))
    def flow() -> None:
        _client(llm).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], max_tokens=4000
        )

    flow.options(id="clamp").run()
    sent = llm.requests[0].body
    assert sent["max_tokens"] < 4000
    assert sent["max_tokens"] * Decimal("0.6") / 1_000_000 <= Decimal("0.0003")
    event = _llm_events("clamp")[0]
    assert event["clamped"] == {"field": "max_tokens", "from": 4000, "to": sent["max_tokens"]}


def test_resumed_run_does_not_resend_finished_calls(configured: str, llm: LLMServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(
        {"WFLO_DATABASE_URL": configured, "LLMAPP_BASE": llm.url, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    )
    code = "import llmapp, sys; print(llmapp.three_calls.options(id='crashy').run(sys.argv[1]))"
    marker = str(tmp_path / "died-once")
    first = subprocess.run([sys.executable, "-c", code, marker], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == -9, first.stderr  # SIGKILL mid-run, after two finished calls
    assert llm.request_count == 2
    second = subprocess.run([sys.executable, "-c", code, marker], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert llm.request_count == 3  # the two finished calls were replayed from the journal
    assert len(_llm_events("crashy")) == 3


def test_streaming_settled_on_reported_usage(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("a b c d", input_tokens=500, output_tokens=4))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> str:
        stream = _client(llm).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert flow.options(id="stream").run().split() == ["a", "b", "c", "d"]
    event = _llm_events("stream")[0]
    assert Decimal(event["cost_usd"]) == _price("gpt-4o-mini", "openai", input_tokens=500, output_tokens=4)
    assert ledger().scope_usage("run:stream").reserved == 0


def test_abandoned_stream_is_settled(configured: str, llm: LLMServer) -> None:
    # Slow chunks: the client cannot have read ahead to the usage event when it stops.
    llm.script(Reply("w " * 200, input_tokens=100, output_tokens=200, chunk_delay=0.01))

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> None:
        stream = _client(llm).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        for i, _chunk in enumerate(stream):
            if i == 3:
                break
        stream.close()

    flow.options(id="abandon").run()
    event = _llm_events("abandon")[0]
    # wflo asked the stream for its usage (the caller did not); the caller left before it came,
    # so what the provider billed is unknown: the call is charged at its reservation, not at
    # the 3 chunks the caller read.
    assert llm.requests[0].body["stream_options"] == {"include_usage": True}
    assert event["cost_estimated"] == "reservation" and event["cost_usd"] == event["reserved_usd"]
    assert Decimal(event["cost_usd"]) >= _price("gpt-4o-mini", "openai", input_tokens=100, output_tokens=200)
    usage = ledger().scope_usage("run:abandon")
    assert usage.reserved == 0 and usage.spent == Decimal(event["cost_usd"])


def test_cached_and_reasoning_tokens_priced(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("thought", input_tokens=10_000, cached_tokens=8_000, output_tokens=300, reasoning_tokens=250))

    @wflo.workflow(budget=wflo.Budget(usd="5"))
    def flow() -> str:
        return _client(llm).responses.create(model="o3-mini", input="think").output_text

    flow.options(id="reason").run()
    event = _llm_events("reason")[0]
    expected = _price("o3-mini", "openai", input_tokens=10_000, cache_read_tokens=8_000, output_tokens=300)
    assert Decimal(event["cost_usd"]) == expected
    assert event["usage"]["reasoning_tokens"] == 250


def test_anthropic_sync_async_and_stream(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("hello", input_tokens=40, output_tokens=1), Reply("there", input_tokens=50, output_tokens=1, cache_write_tokens=10),
               Reply("x y", input_tokens=60, output_tokens=2))  # fmt: skip

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> list[str]:
        sync = anthropic.Anthropic(base_url=llm.anthropic_url, api_key="t", max_retries=0)
        a = (
            sync.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
            .content[0]
            .text
        )

        async def other() -> str:
            client = anthropic.AsyncAnthropic(base_url=llm.anthropic_url, api_key="t", max_retries=0)
            msg = await client.messages.create(
                model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
            await client.close()
            return msg.content[0].text

        b = asyncio.run(other())
        with sync.messages.stream(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            c = s.get_final_text()
        return [a, b, c]

    assert flow.options(id="claude").run() == ["hello", "there", "x y"]
    events = _llm_events("claude")
    assert len(events) == 3 and all(Decimal(e["cost_usd"]) > 0 for e in events)
    assert events[1]["usage"]["cache_write_tokens"] == 10


def _tenant_worker(url: str, base: str, out: mp.Queue) -> None:  # type: ignore[type-arg]
    os.environ["LLMAPP_BASE"] = base
    wflo.configure(database=url)
    import llmapp

    try:
        out.put(llmapp.tenant_calls.run(8))
    except BaseException as exc:  # report, don't leave the parent waiting
        out.put(repr(exc))
        raise


def test_tenant_budget_holds_across_processes(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda request: Reply("ok " * 150, output_tokens=150)
    wflo.budgets.set("tenant:race", usd="0.002")
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_tenant_worker, args=(configured, llm.url, out)) for _ in range(3)]
    for p in procs:
        p.start()
    done = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(isinstance(d, int) for d in done), done
    usage = ledger().usage("tenant:race")[0]
    assert usage.spent <= Decimal("0.002") and usage.reserved == 0
    assert 0 < sum(done) < 24  # the limit was reached: every process stopped at a refusal
    assert llm.request_count == sum(done)


def test_init_two_line_mode(sqlite_url: str, llm: LLMServer, tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text(
        "import wflo, openai, sys\n"
        f"run = wflo.init(budget_usd='0.0001', database={sqlite_url!r})\n"
        f"client = openai.OpenAI(base_url={llm.openai_url!r}, api_key='t', max_retries=0)\n"
        "client.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}], max_tokens=20)\n"
        "try:\n"
        "    client.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}], max_tokens=100000)\n"
        "except wflo.BudgetExceededError as e:\n"
        "    print('refused', e.scope)\n"
        "print(run.id)\n"
    )
    llm.script(Reply("fine", input_tokens=5, output_tokens=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    wflo.configure(database=sqlite_url)
    run = _config.get_store().get_run(lines[-1])
    assert run.status == "succeeded"
    assert len(_llm_events(run.id)) >= 1


def test_sigkill_mid_call_reservation_expires_and_resume_settles(
    configured: str, llm: LLMServer, tmp_path: Path
) -> None:
    """A process killed while its call is in flight leaks no money: the hold expires."""
    import signal
    import time

    llm.script(Reply("slow answer", output_tokens=2, delay=30))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": configured, "LLMAPP_BASE": llm.url, "WFLO_RESERVATION_TTL": "1",
                "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])})  # fmt: skip
    code = "import llmapp; print(llmapp.three_calls.options(id='midcall').run(''))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while llm.request_count == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    held = ledger().scope_usage("run:midcall")
    assert held is not None and held.reserved > 0  # the worst case is held while the call is out
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(1.2)  # past the reservation's expiry
    assert ledger().expire() == 1  # what any later reservation, or `wflo budgets list`, does first
    after = ledger().scope_usage("run:midcall")
    assert after is not None and after.reserved == 0 and ledger().open_reservations() == 0
    llm.responder = lambda r: Reply("fast", output_tokens=1)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    final = ledger().scope_usage("run:midcall")
    assert final.reserved == 0 and final.spent > 0
    assert len(_llm_events("midcall")) == 3
