"""Prometheus metrics: computed from the store at each scrape, served over HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import wflo
import wflo.observability as obs
from wflo import _config
from wflo.testing import LLMServer, Reply


@wflo.tool
def lookup(q: str) -> str:
    """Look something up."""
    return q


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _get(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_after_runs(configured: str, llm: LLMServer) -> None:
    llm.script(
        Reply("one", input_tokens=100, output_tokens=3),
        Reply("two", input_tokens=50, output_tokens=2),
        Reply("three", input_tokens=10, output_tokens=1),
    )
    client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)

    @wflo.workflow(name="chatty", budget=wflo.Budget(usd="0.001"))
    def chatty(n: int) -> int:
        for i in range(n):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}])
        with contextlib.suppress(wflo.BudgetExceededError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x " * 100_000}], max_tokens=4000
            )
        return n

    @wflo.workflow(name="loopy", guards=wflo.LoopGuard(max_repeats=2))
    def loopy() -> None:
        while True:
            lookup(q="same")

    @wflo.workflow(name="broken")
    def broken() -> None:
        raise ValueError("no")

    assert chatty.run(2) == 2
    assert chatty.run(1) == 1
    with pytest.raises(wflo.LoopDetectedError):
        loopy.run()
    with pytest.raises(ValueError):
        broken.run()

    server = obs.serve_metrics(0, addr="127.0.0.1")
    try:
        port = server.server_port
        m = _scrape(port)
        assert _get(m, "wflo_runs", workflow="chatty", status="succeeded") == 2
        assert _get(m, "wflo_runs", workflow="loopy", status="stopped") == 1
        assert _get(m, "wflo_runs", workflow="broken", status="failed") == 1
        assert _get(m, "wflo_llm_tokens_total", workflow="chatty", model="gpt-4o-mini", type="input") == 160
        assert _get(m, "wflo_llm_tokens_total", workflow="chatty", model="gpt-4o-mini", type="output") == 6
        spent = sum(
            float(e.data["cost_usd"])
            for r in _config.get_store().list_runs(workflow="chatty")
            for e in _config.get_store().events(r.id)
            if e.type == "call.completed" and e.data.get("cost_usd")
        )
        assert spent > 0
        assert _get(m, "wflo_llm_cost_usd_total", workflow="chatty", model="gpt-4o-mini") == pytest.approx(spent)
        assert _get(m, "wflo_llm_calls_total", workflow="chatty", model="gpt-4o-mini", outcome="ok") == 3
        assert _get(m, "wflo_budget_refusals_total", workflow="chatty", scope="run", reason="budget_exceeded") == 2
        assert _get(m, "wflo_guard_stops_total", workflow="loopy", detector="max_repeats") == 1

        # computed from the store at each scrape: a run made now shows at once
        llm.script(Reply("four", input_tokens=5, output_tokens=1))
        chatty.run(1)
        m = _scrape(port)
        assert _get(m, "wflo_runs", workflow="chatty", status="succeeded") == 3
        assert _get(m, "wflo_llm_tokens_total", workflow="chatty", model="gpt-4o-mini", type="input") == 165
    finally:
        server.shutdown()
        server.server_close()


def test_pending_approvals_gauge(sqlite_url: str) -> None:
    import sqlite3

    from prometheus_client import generate_latest

    from wflo.observability._metrics import registry

    _config.configure(database=sqlite_url)
    store = _config.get_store()
    cols = [r[1] for r in store.read("PRAGMA table_info(approvals)")]
    row: dict[str, Any] = {c: "x" for c in cols}
    row.update(id="a1", run_id="r1", call_id="1", tool="send_email", status="pending", quorum=1, approvers="[]")
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute(
            f"INSERT INTO approvals ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )
    text = generate_latest(registry(store)).decode()
    assert 'wflo_approvals_waiting{tool="send_email"} 1.0' in text


def test_spend_counters_are_the_books_and_never_fall(store_url: str) -> None:
    """Spend and tokens come from the spend book: a pruned journal takes nothing from them, a
    priced tool is not an LLM's spend, and a call lost with its process counts once charged."""
    from decimal import Decimal

    from prometheus_client import generate_latest

    from wflo.cost import spend
    from wflo.cost._ledger import Booking, Ledger
    from wflo.observability._metrics import registry
    from wflo.store import Head, NewEvent

    _config.configure(database=store_url)
    store = _config.get_store()
    store.create_run(run_id="m-1", workflow="books", input={})
    ledger = Ledger(store)
    call = {"kind": "llm", "call": "1", "name": "gpt-4o", "cost_usd": "0.5",
            "usage": {"input_tokens": 7, "output_tokens": 3}}  # fmt: skip
    ops = [
        ledger.book_op("m-1", Decimal("0.5"), lambda: Booking("gpt-4o", False, 7, 3)),
        ledger.book_op("m-1", Decimal("0.25"), lambda: Booking("tool:paid")),
    ]
    run = store.get_run("m-1")
    store.append("m-1", Head(run.last_seq, run.last_hash), [NewEvent("call.completed", call)], owner=None, ops=ops)

    def scrape() -> dict[tuple[str, str], float]:
        out = {}
        for family in text_string_to_metric_families(generate_latest(registry(store)).decode()):
            for sample in family.samples:
                if sample.name in ("wflo_llm_cost_usd_total", "wflo_llm_tokens_total"):
                    out[(sample.name, sample.labels.get("type", sample.labels["model"]))] = sample.value
        return out

    first = scrape()
    assert first == {("wflo_llm_cost_usd_total", "gpt-4o"): 0.5, ("wflo_llm_tokens_total", "input"): 7.0,
                     ("wflo_llm_tokens_total", "output"): 3.0}  # fmt: skip
    assert Decimal(spend(store, "model")["total"]["cost_usd"]) == Decimal("0.75")  # the tool's is in the book
    sql = "DELETE FROM events WHERE chain = ? AND type = 'call.completed'"
    if store.dialect == "postgresql":  # the append-only trigger is lifted only for this
        store.write(lambda cur: (cur.execute("ALTER TABLE events DISABLE TRIGGER USER"),
                                 store.execute(cur, sql, ("m-1",)),
                                 cur.execute("ALTER TABLE events ENABLE TRIGGER USER")))  # fmt: skip
    else:
        store.write(lambda cur: store.execute(cur, sql, ("m-1",)))
    assert scrape() == first


def test_worker_serves_metrics(tmp_path: Path) -> None:
    (tmp_path / "mwf.py").write_text(
        textwrap.dedent("""
        import wflo

        @wflo.workflow(name="double")
        def double(x: int) -> int:
            return x * 2
        """)
    )
    db = f"sqlite:///{tmp_path}/w.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_DATABASE_URL=db, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    wflo_cli = [sys.executable, "-m", "wflo.cli"]
    subprocess.run([*wflo_cli, "run", "mwf:double", "--input", "[4]"], env=env, cwd=tmp_path, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    port = _free_port()
    worker = subprocess.Popen(
        [*wflo_cli, "worker", "-i", "mwf", "--metrics-port", str(port), "--idle-exit", "20", "-q"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                m = _scrape(port)
                break
            except OSError:
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise
                time.sleep(0.1)
        assert _get(m, "wflo_runs", workflow="double", status="succeeded") == 1
    finally:
        worker.terminate()
        worker.communicate(timeout=20)
