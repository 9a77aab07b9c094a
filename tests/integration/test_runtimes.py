"""Runtimes side by side: each run is priced, limited and resumed by its own runtime's objects.

Two ``wflo.config.Runtime`` objects in one process, each with its own store, price book and
policies, over real HTTP (the scripted LLM server): a run started in one is charged by its
book and limited by its policies, never the other's nor the process's; a run resumed by a
worker uses the worker's runtime, whichever thread serves it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

import wflo
from wflo import _config
from wflo.config import Runtime
from wflo.cost import Ledger
from wflo.engine import Worker
from wflo.testing import LLMServer, Reply

MODEL = "rt-model"  # known to no price book but the runtimes' own


def _chat(llm: LLMServer) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
    return httpx.post(llm.openai_url + "/chat/completions", json=body, timeout=30).status_code


@wflo.workflow(name="rt-two-calls", budget=wflo.Budget(usd="5"))
def two_calls(url: str) -> list[str]:
    llm = _Server(url)
    out = []
    for _ in range(2):
        try:
            out.append(str(_chat(llm)))  # type: ignore[arg-type]
        except wflo.errors.RateLimitedError:
            out.append("limited")
    return out


class _Server:
    """Enough of an ``LLMServer`` for ``_chat`` (a workflow's input must be JSON)."""

    def __init__(self, url: str) -> None:
        self.openai_url = url


def _costs(rt: Runtime, run_id: str) -> list[str | None]:
    return [
        e.data.get("cost_usd")
        for e in rt.store.events(run_id)
        if e.type == "call.completed" and e.data.get("kind") == "llm"
    ]


@pytest.fixture
def answers(llm: LLMServer) -> LLMServer:
    llm.responder = lambda request: Reply("ok", input_tokens=5, output_tokens=1000)
    return llm


def test_two_runtimes_in_two_threads_price_and_limit_by_their_own(tmp_path: Path, answers: LLMServer) -> None:
    _config.configure(database=f"sqlite:///{tmp_path}/process.db")
    a = Runtime(database=f"sqlite:///{tmp_path}/a.db")
    b = Runtime(database=f"sqlite:///{tmp_path}/b.db")
    # The same model priced differently: 5 in + 1000 out costs $0.002005 in a, $0.02005 in b.
    a.prices.set(MODEL, input_per_mtok="1", output_per_mtok="2")
    b.prices.set(MODEL, input_per_mtok="10", output_per_mtok="20")
    # a admits one request a minute (and waits for none); b has no limit.
    a.policies.rate_limit(f"model:{MODEL}", requests_per_minute=1, max_wait=0)
    results: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def work(rt: Runtime, key: str) -> None:
        try:
            with rt.activate():
                barrier.wait(timeout=10)  # both runtimes active at once
                results[key] = two_calls.options(id=f"run-{key}").run(answers.openai_url)
        except BaseException as exc:  # shown by the assertion below
            results[key] = exc

    threads = [threading.Thread(target=work, args=(rt, key)) for rt, key in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert results == {"a": ["200", "limited"], "b": ["200", "200"]}
        assert _costs(a, "run-a") == ["0.002005"]  # a's book, and a's limit refused its second call
        assert _costs(b, "run-b") == ["0.02005", "0.02005"]  # b's book, and no limit
        assert Ledger(a.store).scope_usage("run:run-a").spent == Decimal("0.002005")
        assert Ledger(b.store).scope_usage("run:run-b").spent == Decimal("0.0401")
        assert answers.request_count == 3  # a's refused call never left
        # The process's book and policies were not touched, nor its store.
        with pytest.raises(wflo.errors.UnknownPriceError):
            wflo.cost.prices.lookup(MODEL)
        assert wflo.policies.matching(_AnyCall()) == ([], [])
        assert _config.get_store().list_runs() == []
    finally:
        a.close()
        b.close()


class _AnyCall:
    """What ``Policies.matching`` reads of a call: an LLM call of MODEL."""

    def __init__(self) -> None:
        self.kind, self.name = "llm", MODEL
        self.meta: dict[str, Any] = {"provider": "openai"}


_crash = threading.Event()


@wflo.workflow(name="rt-resume", budget=wflo.Budget(usd="5"))
def crashes_once(url: str) -> list[int]:
    llm = _Server(url)
    first = _chat(llm)  # type: ignore[arg-type]
    if _crash.is_set():
        _crash.clear()
        raise SystemExit("the process dies here")  # the lease is let go, the run stays running
    return [first, _chat(llm)]  # type: ignore[arg-type]


def test_a_run_resumed_by_a_worker_uses_the_workers_runtime(tmp_path: Path, answers: LLMServer) -> None:
    _config.configure(database=f"sqlite:///{tmp_path}/process.db")
    shared = f"sqlite:///{tmp_path}/shared.db"
    starter = Runtime(database=shared)
    starter.prices.set(MODEL, input_per_mtok="1", output_per_mtok="2")  # $0.002005 a call
    served = Runtime(database=shared)
    served.prices.set(MODEL, input_per_mtok="10", output_per_mtok="20")  # $0.02005 a call
    try:
        _crash.set()
        with starter.activate(), pytest.raises(SystemExit):
            crashes_once.options(id="resumed").run(answers.openai_url)
        assert starter.store.get_run("resumed").status == "running"
        with served.activate():
            worker = Worker(workflows=["rt-resume"], concurrency=1)
        assert worker.runtime is served and worker.store is served.store
        done: list[int] = []
        # Served from a plain thread, outside any activation: the worker keeps its runtime.
        thread = threading.Thread(target=lambda: done.append(worker.run(max_runs=1, idle_timeout=20)))
        thread.start()
        thread.join(timeout=60)
        record = served.store.get_run("resumed")
        assert done == [1] and record.status == "succeeded", record.error
        assert _costs(served, "resumed") == [
            "0.002005",
            "0.02005",
        ]  # the first call replayed, the second at served's price
        types = [e.type for e in served.store.events("resumed")]
        assert "run.resumed" in types
        assert Ledger(served.store).scope_usage("run:resumed").spent == Decimal("0.022055")
        assert answers.request_count == 2  # the finished call was not sent again
    finally:
        starter.close()
        served.close()


def test_importing_wflo_installs_and_registers_nothing(tmp_path: Path) -> None:
    """A fresh interpreter: ``import wflo`` leaves httpx's transports and ``threading`` as they
    were and registers no guard factory or hook; the first run of a runtime installs the
    interception."""
    code = """
import json, threading, concurrent.futures, sys
import httpx
classes = [httpx.Client, httpx.AsyncClient, httpx.HTTPTransport, httpx.AsyncHTTPTransport]
before = [dict(vars(c)) for c in classes]
start, submit = threading.Thread.start, concurrent.futures.ThreadPoolExecutor.submit
import wflo
from wflo.engine import _executor, _workflow
from wflo.integrations import _http
report = {
    "untouched": [dict(vars(c)) == b for c, b in zip(classes, before)],
    "threads": threading.Thread.start is start and concurrent.futures.ThreadPoolExecutor.submit is submit,
    "registered": [len(_executor._guard_factories), len(_executor._finish_ops), len(_executor._resume_hooks),
                   len(_workflow._cancel_hooks)],
    "installed": sorted(_http._installed),
    "wiring_imported": "wflo._wiring" in sys.modules,
}
rt = wflo.config.Runtime(database="sqlite:///" + sys.argv[1])
@wflo.workflow(name="first")
def first():
    return 1
with rt.activate():
    first.run()
report["after_run"] = {"send_wrapped": httpx.Client.send is not before[0]["send"], "installed": sorted(_http._installed)}
rt.close()
print(json.dumps(report))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "w.db")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["untouched"] == [True] * 4
    assert report["threads"] is True
    assert report["registered"] == [0, 0, 0, 0]
    assert report["installed"] == []
    assert report["wiring_imported"] is False
    assert report["after_run"]["send_wrapped"] is True and "httpx" in report["after_run"]["installed"]


_seen_in_threads: list[object] = []


@wflo.workflow(name="rt-threads", budget=wflo.Budget(usd="5"))
def in_a_pool(url: str) -> int:
    from concurrent.futures import ThreadPoolExecutor

    def call(_: int) -> int:
        _seen_in_threads.append(wflo.config.runtime())
        return _chat(_Server(url))  # type: ignore[arg-type]

    with ThreadPoolExecutor(2) as pool:
        return sum(pool.map(call, range(2)))


def test_a_runs_threads_use_its_runtime(tmp_path: Path, answers: LLMServer) -> None:
    """Threads a run starts carry the run, and so its runtime: priced by its book, not the process's."""
    _config.configure(database=f"sqlite:///{tmp_path}/process.db")
    rt = Runtime(database=f"sqlite:///{tmp_path}/a.db")
    rt.prices.set(MODEL, input_per_mtok="1", output_per_mtok="2")
    _seen_in_threads.clear()
    try:
        with rt.activate():
            assert in_a_pool.options(id="pool").run(answers.openai_url) == 400
        assert _seen_in_threads == [rt, rt]
        assert _costs(rt, "pool") == ["0.002005", "0.002005"]
    finally:
        rt.close()
