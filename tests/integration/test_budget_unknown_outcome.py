"""P1: an unknown outcome is charged, never forgiven (kill -9 mid-call, timeout after sending).

Real processes killed with SIGKILL while the real openai SDK waits for wflo.testing's server,
on SQLite and PostgreSQL. Before, such a call's reservation expired and was *released*: the
provider billed it and wflo recorded $0.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import openai
import pytest
from budget_helpers import ANSWER, HERE, billed, llm_events, subprocess_env

import wflo
from wflo import _config
from wflo.cost._api import ledger
from wflo.testing import LLMServer, Reply

sys.path.insert(0, str(HERE))

CODE = "import threadapp; print(threadapp.one_call.options(id='lost').run())"


def _wflo(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command (a subprocess, as users run it), on the test's store."""
    env = subprocess_env(db, None, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "wflo.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _slow(rec: Any) -> Reply:
    return Reply(ANSWER.text, delay=30)


def _start_and_kill(env: dict[str, str], llm: LLMServer) -> Decimal:
    """Start the run in a subprocess, SIGKILL it while its call is at the server; return what it held."""
    seen = llm.request_count
    proc = subprocess.Popen([sys.executable, "-c", CODE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while llm.request_count == seen:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    held = ledger().scope_usage("run:lost")
    assert held is not None and held.reserved > 0
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    return held.reserved


def test_kill9_mid_call_is_charged_at_its_reservation(configured: str, llm: LLMServer) -> None:
    llm.responder = _slow
    env = subprocess_env(configured, llm, WFLO_RESERVATION_TTL="1")
    # Cycle 1: killed mid-call; the hold expires and is charged, not released.
    first = _start_and_kill(env, llm)
    time.sleep(1.2)
    assert ledger().expire() == 1
    after = ledger().scope_usage("run:lost")
    assert after is not None and after.reserved == 0 and after.spent == first
    (row,) = ledger().unknown_outcomes("lost")
    assert row["reason"] == "expired" and Decimal(row["amount_usd"]) == first and row["call"] == "1"

    # Cycle 2: resumed, killed again mid-call; cycle 3 resumes before that hold expires: the
    # resume itself charges it, recorded in the run's journal.
    second = _start_and_kill(subprocess_env(configured, llm, WFLO_RESERVATION_TTL="600"), llm)
    llm.responder = lambda r: ANSWER
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    usage = ledger().scope_usage("run:lost")
    assert usage is not None and usage.reserved == 0 and ledger().open_reservations() == 0
    (completed,) = llm_events("lost", ("call.completed",))
    assert usage.spent == first + second + Decimal(completed["cost_usd"])
    assert usage.spent >= billed(llm), "recorded spend must cover what the provider could bill"
    lost = [e.data for e in _config.get_store().events("lost") if e.type == "budget.unknown_outcome"]
    assert sorted(Decimal(e["cost_usd"]) for e in lost) == sorted([first, second])
    assert all(e["cost_estimated"] and e["call"] == "1" for e in lost)
    assert {e["unknown_outcome"] for e in lost} == {"expired", "lost"}

    # What people read: estimates are named as such.
    costs = _wflo(configured, "costs", "--by", "run", "--json")
    assert costs.returncode == 0, costs.stderr
    (line,) = json.loads(costs.stdout)
    assert Decimal(line["cost_usd"]) == usage.spent and Decimal(line["estimated_usd"]) == first + second
    shown = _wflo(configured, "runs", "show", "lost")
    assert shown.returncode == 0 and shown.stdout.count("estimate") == 2, shown.stdout


def test_expired_and_unrecorded_loss_shows_in_costs(configured: str, llm: LLMServer) -> None:
    llm.responder = _slow
    env = subprocess_env(configured, llm, WFLO_RESERVATION_TTL="1")
    held = _start_and_kill(env, llm)
    time.sleep(1.2)
    assert ledger().expire() == 1  # what any reservation, `wflo budgets list` or a resume does
    (line,) = json.loads(_wflo(configured, "costs", "--by", "run", "--json").stdout)
    assert Decimal(line["estimated_usd"]) == held == Decimal(line["cost_usd"])
    shown = _wflo(configured, "runs", "show", "lost")
    assert "charged at its reservation (estimate: expired)" in shown.stdout, shown.stdout


def test_timeout_after_sending_is_charged_at_its_reservation(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda r: Reply(ANSWER.text, delay=2)

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> str:
        client = openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0, timeout=0.3)
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        except openai.APITimeoutError:
            return "timed out"
        finally:
            client.close()
        return "answered"

    assert flow.options(id="timeout").run() == "timed out"
    (event,) = llm_events("timeout")
    assert event["unknown_outcome"] == "timeout" and event["cost_estimated"] is True
    assert event["cost_usd"] == event["reserved_usd"]
    usage = ledger().scope_usage("run:timeout")
    assert usage is not None and usage.reserved == 0 and usage.spent == Decimal(event["reserved_usd"]) > 0
    assert usage.spent >= billed(llm)
    (row,) = ledger().unknown_outcomes("timeout")
    assert row["reason"] == "timeout" and row["recorded"] == 1


def test_refused_connection_is_not_charged(configured: str) -> None:
    """Nothing was sent (no one listens): no unknown outcome, nothing charged."""

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> str:
        client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="test", max_retries=0)
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        except openai.APIConnectionError:
            return "no connection"
        finally:
            client.close()
        return "answered"

    assert flow.options(id="refused").run() == "no connection"
    (event,) = llm_events("refused")
    assert "unknown_outcome" not in event
    usage = ledger().scope_usage("run:refused")
    assert usage is not None and usage.spent == 0 and usage.reserved == 0
    assert ledger().unknown_outcomes("refused") == []


@pytest.mark.parametrize("late", ["0.00001", "0.5"])
def test_late_real_cost_replaces_the_estimate(configured: str, late: str) -> None:
    from wflo.cost._ledger import CostRequest

    led = ledger()
    led.set_limit("tenant:late", "1", by="test")
    res = led.reserve(
        run_id=None, scopes=["tenant:late"], ttl_seconds=0.01,
        cost=CostRequest(input_cost=Decimal("0.001"), output_price_per_token=Decimal("0.00001"), output_cap=100),
    )  # fmt: skip
    assert res is not None
    time.sleep(0.05)
    assert led.expire() == 1
    assert led.scope_usage("tenant:late").spent == res.amount  # type: ignore[union-attr]
    led.settle(res, Decimal(late))  # the answer arrived after all
    usage = led.scope_usage("tenant:late")
    assert usage is not None and usage.spent == Decimal(late) and usage.reserved == 0
    (row,) = led.unknown_outcomes()
    assert row["actual_usd"] == late
