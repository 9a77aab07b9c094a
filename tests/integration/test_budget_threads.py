"""P1/P3 for calls made from threads and executors a run starts (threads, pools, asyncio, LangGraph).

Real openai SDK over HTTP against wflo.testing's server, on SQLite and PostgreSQL. Before the
run context followed the work, every one of these calls reached the server unguarded,
unjournaled and unpaid.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from typing import Any

import openai
import pytest
from budget_helpers import ANSWER, HERE, billed, llm_events, subprocess_env

import wflo
from wflo import _config
from wflo.cost._api import ledger
from wflo.testing import LLMServer, Reply, ToolCall

sys.path.insert(0, str(HERE))

LIMIT = Decimal("0.0005")
CALLS = 40
NO_LOOP_STOP = wflo.LoopGuard(max_repeats=None, max_same_error=None)


def _ask(llm: LLMServer, i: int) -> str:
    client = openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)
    try:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"question number {i}"}], max_tokens=200
        )
        return "ok"
    except wflo.BudgetExceededError:
        return "refused"
    finally:
        client.close()


def _threads(llm: LLMServer) -> list[str]:
    out: list[str] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(CALLS // 8):
            result = _ask(llm, t * 100 + i)
            with lock:
                out.append(result)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _pool(llm: LLMServer) -> list[str]:
    with cf.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: _ask(llm, i), range(CALLS)))


async def _to_thread(llm: LLMServer) -> list[str]:
    return list(await asyncio.gather(*(asyncio.to_thread(_ask, llm, i) for i in range(CALLS))))


async def _run_in_executor(llm: LLMServer) -> list[str]:
    loop = asyncio.get_running_loop()
    with cf.ThreadPoolExecutor(8) as pool:
        default = [loop.run_in_executor(None, _ask, llm, i) for i in range(CALLS // 2)]
        own = [loop.run_in_executor(pool, _ask, llm, i) for i in range(CALLS // 2, CALLS)]
        return list(await asyncio.gather(*default, *own))


MECHANISMS: dict[str, Any] = {
    "thread": _threads,
    "pool": _pool,
    "to_thread": _to_thread,
    "run_in_executor": _run_in_executor,
}


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_calls_from_workers_are_guarded_journaled_and_paid(configured: str, llm: LLMServer, mechanism: str) -> None:
    # Answers take a while, so the workers' calls overlap whatever the machine's load: the budget
    # must then refuse some of them (each reserves its 200-token cap while in flight).
    slow = dataclasses.replace(ANSWER, delay=0.2)
    llm.responder = lambda r: slow
    body = MECHANISMS[mechanism]
    run_id = f"workers-{mechanism}"
    if asyncio.iscoroutinefunction(body):

        @wflo.workflow(name=f"workers.{mechanism}", budget=wflo.Budget(usd=LIMIT), guards=NO_LOOP_STOP)
        async def flow() -> list[str]:
            return await body(llm)

        results = asyncio.run(flow.options(id=run_id).arun())
    else:

        @wflo.workflow(name=f"workers.{mechanism}", budget=wflo.Budget(usd=LIMIT), guards=NO_LOOP_STOP)
        def flow() -> list[str]:
            return body(llm)

        results = flow.options(id=run_id).run()
    counts = Counter(results)
    assert counts["ok"] + counts["refused"] == CALLS
    assert counts["refused"] > 0, "the budget must refuse calls made from worker threads"
    assert llm.request_count == counts["ok"], "a refused call must not reach the server"
    events = llm_events(run_id, ("call.completed",))
    assert len(events) == counts["ok"]
    assert len(llm_events(run_id, ("call.failed",))) == counts["refused"]
    # Every call is numbered in its worker's lane (t1.1, t2.1, …), not in the main sequence.
    assert all(e["call"].startswith("t") for e in events)
    usage = ledger().scope_usage(f"run:{run_id}")
    assert usage is not None and usage.reserved == 0
    recorded = sum(Decimal(e["cost_usd"]) for e in events)
    assert usage.spent == recorded == billed(llm)
    assert usage.spent <= LIMIT


def test_thread_outliving_its_run_is_refused(configured: str, llm: LLMServer) -> None:
    go = threading.Event()
    seen: list[BaseException | str] = []

    def late() -> None:
        go.wait(10)
        client = openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "late"}])
            seen.append("sent")
        except BaseException as exc:
            seen.append(exc)
        finally:
            client.close()

    holder: list[threading.Thread] = []

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> str:
        t = threading.Thread(target=late)
        t.start()
        holder.append(t)
        return "done"

    assert flow.options(id="outlived").run() == "done"
    go.set()
    holder[0].join(10)
    assert len(seen) == 1 and isinstance(seen[0], wflo.errors.RunEndedError), seen
    assert "outlived" in str(seen[0])
    assert llm.request_count == 0
    assert _config.get_store().events("outlived")[-1].type == "run.completed"


def test_pool_outside_any_run_is_untouched(configured: str, llm: LLMServer) -> None:
    """Propagation binds only work started inside a run: a pool used afterwards, outside any
    run, is not guarded (nothing to guard it with) and is not attributed to the old run."""

    with cf.ThreadPoolExecutor(2) as pool:

        @wflo.workflow(budget=wflo.Budget(usd="1"))
        def flow() -> str:
            return pool.submit(lambda: wflo.engine.current_run().run_id).result()  # type: ignore[union-attr]

        assert flow.options(id="in-run").run() == "in-run"
        assert pool.submit(wflo.engine.current_run).result() is None


# ----------------------------------------------------------------------------- LangGraph
def test_langgraph_toolnode_parallel_tools_calling_llms(configured: str, llm: LLMServer) -> None:
    pytest.importorskip("langgraph")
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    threads: set[str] = set()

    @tool
    def research(topic: str) -> str:
        """Research a topic with a sub-agent."""
        threads.add(threading.current_thread().name)
        client = openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)
        try:
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"research {topic}"}], max_tokens=100
            )
            return reply.choices[0].message.content or ""
        finally:
            client.close()

    model = ChatOpenAI(model="gpt-4o-mini", base_url=llm.openai_url, api_key="test", max_retries=0).bind_tools(
        [research]
    )

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    g = StateGraph(MessagesState)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode([research]))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    graph = g.compile()
    topics = ["alpha", "beta", "gamma", "delta"]
    llm.script(Reply(tool_calls=[ToolCall("research", {"topic": t}) for t in topics]))
    llm.responder = lambda r: Reply(f"found {r.body['messages'][-1]['content']}", output_tokens=3)

    @wflo.workflow(budget=wflo.Budget(usd="1"))
    def flow() -> str:
        out = graph.invoke({"messages": [("user", "research four topics")]})
        return str(out["messages"][-1].content)

    flow.options(id="graph-tools").run()
    assert len(threads) > 1, "ToolNode ran the tools on several threads"
    events = llm_events("graph-tools", ("call.completed",))
    assert llm.request_count == len(events) == 2 + len(topics)
    # The agent's two calls are on the main path; each tool's call is in its own lane.
    assert sorted(e["call"] for e in events) == ["1", "2", "t1.1", "t2.1", "t3.1", "t4.1"]
    lanes = {e["call"]: json.loads(e["output"]["body"])["choices"][0]["message"]["content"] for e in events}
    assert sorted(lanes[f"t{i}.1"] for i in range(1, 5)) == sorted(f"found research {t}" for t in topics)
    usage = ledger().scope_usage("run:graph-tools")
    assert usage is not None and usage.reserved == 0
    assert usage.spent == sum(Decimal(e["cost_usd"]) for e in events) > 0


# ----------------------------------------------------------------------------- replay after kill -9
def _echo(delay_from: int) -> Any:
    def respond(rec: Any) -> Reply:
        prompt = rec.body["messages"][-1]["content"]
        slow = int(prompt.split()[-1]) >= delay_from
        return Reply(f"answer to {prompt}", delay=30 if slow else 0)

    return respond


@pytest.mark.parametrize("app", ["pool_calls", "queue_calls"])
def test_replay_after_sigkill_with_calls_in_threads(configured: str, llm: LLMServer, app: str) -> None:
    """Calls in flight in a pool when the process dies: the finished ones are replayed (never
    sent again, each to its own request), the lost ones run again, the answers line up."""
    count, done_before = 12, 6
    llm.responder = _echo(done_before)
    env = subprocess_env(configured, llm)
    code = f"import json, threadapp; print(json.dumps(threadapp.{app}.options(id='killed-{app}').run({count})))"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(llm_events(f"killed-{app}", ("call.completed",))) >= done_before and llm.request_count >= 10:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    first = Counter(r.body["messages"][-1]["content"] for r in llm.requests)
    assert len(llm_events(f"killed-{app}", ("call.completed",))) == done_before

    llm.responder = _echo(10**6)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    answers = json.loads(second.stdout.strip().splitlines()[-1])
    pairs = (
        answers.items()
        if isinstance(answers, dict)
        else zip([f"prompt {i}" for i in range(count)], answers, strict=True)
    )
    for prompt, answer in pairs:
        assert answer == f"answer to {prompt}"
    sent = Counter(r.body["messages"][-1]["content"] for r in llm.requests)
    for i in range(count):
        prompt = f"prompt {i}"
        if i < done_before:
            assert sent[prompt] == 1, f"{prompt} finished before the kill and must be replayed, not re-sent"
        else:
            assert sent[prompt] == first[prompt] + 1
    events = llm_events(f"killed-{app}", ("call.completed",))
    assert len({e["call"] for e in events}) == len(events) == done_before + (count - done_before)


def test_nested_lanes_are_numbered_from_their_spawning_point(configured: str) -> None:
    @wflo.step
    def work(tag: str) -> str:
        return tag

    @wflo.workflow
    def flow() -> list[str]:
        first = work("main")

        def inner(tag: str) -> str:
            with cf.ThreadPoolExecutor(2) as pool:
                return "+".join(pool.map(work, [f"{tag}.a", f"{tag}.b"]))

        with cf.ThreadPoolExecutor(2) as pool:
            nested = list(pool.map(inner, ["x", "y"]))
        return [first, *nested, work("last")]

    assert flow.options(id="nested").run() == ["main", "x.a+x.b", "y.a+y.b", "last"]
    ids = {e.data["output"]: e.data["call"] for e in _config.get_store().events("nested") if e.type == "call.completed"}
    assert ids == {"main": "1", "x.a": "t1.t1.1", "x.b": "t1.t2.1", "y.a": "t2.t1.1", "y.b": "t2.t2.1", "last": "2"}


def test_importing_wflo_patches_no_thread_machinery() -> None:
    """Propagation is installed by the first run (or wflo.init()), never by ``import wflo``."""
    code = (
        "import threading, concurrent.futures.thread as t; start, submit = threading.Thread.start, "
        "t.ThreadPoolExecutor.submit; import wflo, wflo.cli; "
        "assert threading.Thread.start is start and t.ThreadPoolExecutor.submit is submit; print('clean')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "clean", proc.stderr
