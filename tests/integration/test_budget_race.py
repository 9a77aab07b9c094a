"""P1 under a race: 3 processes x 8 threads (half of them pool tasks), chat (plain, ``n=2``,
streamed) and responses calls through the real openai SDK, one more process SIGKILLed mid-call; SQLite and PostgreSQL.

Afterwards, on every scope: settled spend <= limit, recorded spend >= what the server billed,
nothing left reserved once the dead process's holds expire.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

from budget_helpers import ANSWER, HERE, billed, subprocess_env

import wflo
from wflo import _config
from wflo.cost._api import ledger
from wflo.testing import LLMServer, Reply

sys.path.insert(0, str(HERE))

LIMITS = {"tenant:race": Decimal("0.0004"), "workflow:race-calls": Decimal("0.0005")}
RUN_LIMIT = Decimal("0.00025")  # threadapp.race_calls's Budget
PROCS, THREADS, CALLS = 3, 8, 4


def _prompt(rec: Any) -> str:
    return str(rec.body["messages"][-1]["content"] if "messages" in rec.body else rec.body["input"])


def _respond(rec: Any) -> Reply:
    prompt = _prompt(rec)
    return Reply(ANSWER.text, delay=30 if prompt.startswith("p9 ") else 0)


def _code(proc: int) -> str:
    return (
        "import json, threadapp; "
        f"print(json.dumps(threadapp.race_calls.options(id='race-{proc}').run({proc}, {THREADS}, {CALLS})))"
    )


def test_three_processes_eight_threads_never_overspend(configured: str, llm: LLMServer) -> None:
    for scope, limit in LIMITS.items():
        wflo.budgets.set(scope, usd=limit)
    llm.responder = _respond
    t0 = time.monotonic()
    # The victim: its threads' first calls hang at the server; it is killed with them in flight.
    victim = subprocess.Popen(
        [sys.executable, "-c", _code(9)], env=subprocess_env(configured, llm, WFLO_RESERVATION_TTL="2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    env = subprocess_env(configured, llm)
    procs = [
        subprocess.Popen([sys.executable, "-c", _code(p)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in range(PROCS)
    ]  # fmt: skip
    deadline = time.monotonic() + 40
    while sum(_prompt(r).startswith("p9 ") for r in list(llm.requests)) < 2:
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()  # every hold the victim made is older than this
    victim.communicate(timeout=30)
    stats = {"ok": 0, "refused": 0}
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        for key, value in json.loads(out.strip().splitlines()[-1]).items():
            stats[key] += value
    assert stats["ok"] + stats["refused"] == PROCS * THREADS * CALLS
    assert stats["ok"] > 0 and stats["refused"] > 0, stats

    time.sleep(max(0.0, 2.1 - (time.monotonic() - killed_at)))  # the victim's holds are past their expiry
    led = ledger()
    led.expire()
    assert led.open_reservations() == 0
    scopes = [*LIMITS, *(f"run:race-{p}" for p in [*range(PROCS), 9])]
    for scope in scopes:
        usage = led.scope_usage(scope)
        if usage is None and scope.startswith("run:"):
            # Every call of this run was refused on a shared scope before anything was held on
            # its own: then it has no ledger row, and its journal must show no paid call.
            paid = [e for e in _config.get_store().events(scope[4:]) if e.data.get("cost_usd")]
            assert paid == [], f"{scope} paid {len(paid)} calls without a ledger row"
            continue
        assert usage is not None, scope
        limit = LIMITS.get(scope, RUN_LIMIT)
        assert usage.reserved == 0, scope
        assert usage.spent <= limit, f"{scope} settled {usage.spent} > limit {limit}"
    tenant = led.scope_usage("tenant:race")
    assert tenant is not None
    assert tenant.spent >= billed(llm), "every request the server billed is on the books"
    # The books agree with the journals: completed calls plus the victim's lost calls.
    store = _config.get_store()
    recorded = sum(
        Decimal(e.data.get("cost_usd") or 0)
        for p in [*range(PROCS), 9]
        for e in store.events(f"race-{p}")
        if e.type in ("call.completed", "call.failed")
    )
    lost = sum(Decimal(u["amount_usd"]) for u in led.unknown_outcomes("race-9"))
    assert lost > 0
    assert tenant.spent == recorded + lost
    assert time.monotonic() - t0 < 60
