"""P1 and P3 for LLM calls under repeated SIGKILL: a run of sequential calls through the real
``openai`` SDK to ``wflo.testing``'s server, killed at random moments around its calls (before
the request, while the server answers, after the answer and before its record, in the next
step), resumed each time.

Every call the server answered is paid: by its recorded cost if its record was committed, else
at its reservation (an unknown outcome), never at $0 and never twice; no journaled call is sent
again; and the spend book agrees with the journal (`wflo audit verify`).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest
from _killloop import chaos_env, kill_then_finish

from wflo import _config
from wflo.audit import verify_chain
from wflo.cost import ledger
from wflo.testing import LLMServer, Reply

HERE = Path(__file__).parent
APP = HERE / "llmkillapp.py"
CALLS = 8


def _billed(llm: LLMServer) -> Decimal:
    """What the server billed at list price, for every answer it sent."""
    total = Decimal(0)
    for b in list(llm.billed):
        usage = genai_prices.Usage(input_tokens=b["input_tokens"], output_tokens=b["output_tokens"])
        total += Decimal(genai_prices.calc_price(usage, model_ref=b["model"], provider_id="openai").total_price)
    return total


@pytest.mark.slow
def test_sigkill_around_llm_calls_pays_each_answer_once(store_url: str, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("WFLO_CHAOS_SEED", "8080")))
    with LLMServer() as llm:
        llm.responder = lambda request: Reply("one two three four five", delay=rng.uniform(0.0, 0.03))
        env = {**chaos_env(store_url), "LLMKILL_BASE": llm.openai_url}

        def wait_before_kill(proc: subprocess.Popen[str]) -> None:
            # A kill 0-60 ms after one of this attempt's requests reached the server: before
            # its answer, or after it, before or after its record.
            seen, want = llm.request_count, rng.randint(1, 3)
            deadline = time.monotonic() + 30
            while llm.request_count < seen + want and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.06))

        finished, kills = kill_then_finish(
            [sys.executable, str(APP), "llm-chaos", str(CALLS)], env, wait_before_kill=wait_before_kill, kills_wanted=6
        )
        assert finished == CALLS
        assert kills >= 3, "the kills all landed after the run finished"

        _config.configure(database=store_url)
        store = _config.get_store()
        events = store.events("llm-chaos")
        llm_done = [e.data for e in events if e.type == "call.completed" and e.data.get("kind") == "llm"]
        assert len(llm_done) == CALLS and len({d["call"] for d in llm_done}) == CALLS, llm_done
        lost = [e.data for e in events if e.type == "budget.unknown_outcome"]
        # Each request the server saw is journaled or charged as lost (a kill between the
        # reservation and the request is charged too: wflo cannot tell it was not sent); at most
        # one call is lost per kill.
        assert CALLS <= llm.request_count <= CALLS + len(lost) <= CALLS + kills, (llm.request_count, lost)

        usage = ledger().scope_usage("run:llm-chaos")
        assert usage is not None and usage.reserved == 0 and ledger().open_reservations() == 0
        recorded = sum(Decimal(d["cost_usd"]) for d in llm_done)
        estimated = sum(Decimal(d["cost_usd"]) for d in lost)
        assert usage.spent == recorded + estimated, (usage.spent, recorded, estimated)  # nothing charged twice
        assert usage.spent >= _billed(llm), "an answered call went unpaid"
        assert verify_chain(store, "llm-chaos").ok

        verified = subprocess.run(
            [sys.executable, "-m", "wflo.cli", "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
