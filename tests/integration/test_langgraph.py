"""wflo.wrap on a real LangGraph graph (langchain-openai → openai SDK → wflo.testing's server)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("langchain_openai")

import genai_prices
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt

import wflo
from wflo import _config
from wflo.approvals import approvals
from wflo.cost._api import ledger
from wflo.integrations.langgraph import Checkpointer, WrappedGraph
from wflo.testing import LLMServer, Reply, ToolCall

wrap = wflo.wrap


executed: list[tuple[str, dict[str, Any]]] = []


@tool
def search(query: str) -> str:
    """Search the web for a query."""
    executed.append(("search", {"query": query}))
    return f"results for {query}"


@tool
def send_email(to: str, body: str) -> str:
    """Send an email."""
    executed.append(("send_email", {"to": to, "body": body}))
    return f"sent to {to}"


def build(llm: LLMServer, *, max_tokens: int | None = None, checkpointer: Any = None) -> Any:
    executed.clear()
    tools = [search, send_email]
    model = ChatOpenAI(model="gpt-4o-mini", base_url=llm.openai_url, api_key="test", max_retries=0,
                       max_tokens=max_tokens).bind_tools(tools)  # fmt: skip

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    g = StateGraph(MessagesState)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode(tools))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=checkpointer, name="research")


def _calls(run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [
        e.data
        for e in _config.get_store().events(run_id)
        if e.type in ("call.completed", "call.failed") and (kind is None or e.data["kind"] == kind)
    ]


def _thread(tid: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": tid}}


def test_wrap_unknown_object_names_supported_frameworks() -> None:
    with pytest.raises(wflo.UserError) as info:
        wrap(object())
    for name in ("LangGraph", "pydantic-ai", "CrewAI", "OpenAI Agents SDK"):
        assert name in str(info.value)


def test_tokens_and_cost_per_call_equal_server_usage(configured: str, llm: LLMServer) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"query": "otters"})], input_tokens=1200, output_tokens=7),
        Reply("Otters use rocks.", input_tokens=1500, output_tokens=3),
    )
    graph = wrap(build(llm), budget=wflo.Budget(usd="1"))
    assert isinstance(graph, WrappedGraph)
    out = graph.invoke({"messages": [("user", "What do otters use?")]}, _thread("lg-cost"))
    assert out["messages"][-1].content == "Otters use rocks."
    assert graph.get_graph() is not None  # attribute passthrough
    llm_calls = _calls("lg-cost", "llm")
    assert [(c["usage"]["input_tokens"], c["usage"]["output_tokens"]) for c in llm_calls] == [(1200, 7), (1500, 3)]
    for call, (inp, outp) in zip(llm_calls, [(1200, 7), (1500, 3)], strict=True):
        price = genai_prices.calc_price(genai_prices.Usage(input_tokens=inp, output_tokens=outp),
                                        model_ref="gpt-4o-mini", provider_id="openai")  # fmt: skip
        assert Decimal(call["cost_usd"]) == Decimal(price.total_price)
    (tool_call,) = _calls("lg-cost", "tool")
    assert tool_call["name"] == "search" and tool_call["output"]["content"] == "results for otters"
    assert ledger().scope_usage("run:lg-cost").spent == sum(Decimal(c["cost_usd"]) for c in llm_calls)
    assert wflo.RunHandle("lg-cost").status() == "succeeded"


def test_budget_allows_two_calls_and_refuses_the_third_before_sending(configured: str, llm: LLMServer) -> None:
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"query": "a"})], input_tokens=10, output_tokens=1000),
        Reply(tool_calls=[ToolCall("search", {"query": "b"})], input_tokens=10, output_tokens=1000),
        Reply("never sent", input_tokens=10, output_tokens=1000),
    )
    graph = wrap(build(llm, max_tokens=1000), budget=wflo.Budget(usd="0.00121"))
    with pytest.raises(wflo.BudgetExceededError) as info:
        graph.invoke({"messages": [("user", "go")]}, _thread("lg-budget"))
    assert llm.request_count == 2
    assert info.value.scope == "run:lg-budget"
    usage = ledger().scope_usage("run:lg-budget")
    assert usage.spent <= Decimal("0.00121") and usage.reserved == 0
    assert wflo.RunHandle("lg-budget").status() == "failed"


def test_repeated_tool_call_stopped_by_loop_guard(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda request: Reply(tool_calls=[ToolCall("search", {"query": "same"})])
    graph = wrap(build(llm), guards=wflo.LoopGuard(max_repeats=3))
    with pytest.raises(wflo.LoopDetectedError) as info:
        graph.invoke({"messages": [("user", "loop")]}, _thread("lg-loop"))
    assert info.value.detector == "max_repeats"
    assert executed == [("search", {"query": "same"})] * 3  # the fourth never ran
    assert wflo.RunHandle("lg-loop").status() == "stopped"


def test_tool_approval_pauses_then_resumes(configured: str, llm: LLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:agent-owner")
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=0.05)
    approvals.grant("user:fin", "finance")
    llm.script(
        Reply(tool_calls=[ToolCall("send_email", {"to": "boss@corp.com", "body": "hi"})]),
        Reply("Email sent."),
    )
    graph = wrap(build(llm), approvals={"send_email": wflo.Approval(approvers=["role:finance"])})
    result: dict[str, Any] = {}

    def agent() -> None:
        try:
            result["out"] = graph.invoke({"messages": [("user", "mail the boss")]}, _thread("lg-approve"))
        except BaseException as exc:
            result["error"] = exc

    t = threading.Thread(target=agent)
    t.start()
    deadline = time.monotonic() + 20
    while not approvals.list(run_id="lg-approve") and time.monotonic() < deadline:
        time.sleep(0.05)
    (request,) = approvals.list(run_id="lg-approve")
    # The request is filed just before the run is marked waiting: give the mark a moment.
    while wflo.RunHandle("lg-approve").status() != "waiting" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert wflo.RunHandle("lg-approve").status() == "waiting"
    assert executed == [] and llm.request_count == 1
    assert request.tool == "send_email"
    approvals.approve(request.id, principal="user:fin", action_hash=request.action_hash)
    t.join(30)
    assert "error" not in result, result
    assert result["out"]["messages"][-1].content == "Email sent."
    assert executed == [("send_email", {"to": "boss@corp.com", "body": "hi"})]
    assert llm.request_count == 2  # the first LLM call was replayed, not re-sent
    assert wflo.RunHandle("lg-approve").status() == "succeeded"


CRASH_APP = """
import os, signal, sys
import wflo
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from wflo.integrations.langgraph import Checkpointer

effects, marker, base, saver = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

@tool
def search(query: str) -> str:
    \"\"\"Search.\"\"\"
    with open(effects, "a") as f:
        f.write("search " + query + "\\n")
    return "found " + query

@tool
def fetch(url: str) -> str:
    \"\"\"Fetch a page.\"\"\"
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    with open(effects, "a") as f:
        f.write("fetch " + url + "\\n")
    return "page " + url

model = ChatOpenAI(model="gpt-4o-mini", base_url=base, api_key="t", max_retries=0).bind_tools([search, fetch])
g = StateGraph(MessagesState)
g.add_node("agent", lambda s: {"messages": [model.invoke(s["messages"])]})
g.add_node("tools", ToolNode([search, fetch]))
g.add_edge(START, "agent")
g.add_conditional_edges("agent", tools_condition)
g.add_edge("tools", "agent")
graph = wflo.wrap(g.compile(name="crashy", checkpointer=Checkpointer() if saver == "wflo" else None),
                  budget=wflo.Budget(usd="1"))
out = graph.invoke({"messages": [("user", "research")]}, {"configurable": {"thread_id": "lg-crash"}})
print(out["messages"][-1].content)
"""


@pytest.mark.parametrize("saver", ["none", "wflo"])
def test_sigkill_mid_run_then_resume_resends_no_finished_call(
    configured: str, llm: LLMServer, tmp_path: Path, saver: str
) -> None:
    """With wflo's Checkpointer too: the resumed run deleted the dead attempt's checkpoints through
    ``asyncio.to_thread``, a thread of the run that only the resume started, so the thread running
    ``graph.invoke`` got the next lane number and the ToolNode's tool calls (journaled in a lane
    of that thread) no longer matched their entries: the finished ``search`` ran again."""
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"query": "otters"})]),
        Reply(tool_calls=[ToolCall("fetch", {"url": "https://otters.example"})]),
        Reply("Otters use rocks."),
    )
    script = tmp_path / "app.py"
    script.write_text(CRASH_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": configured, "PYTHONPATH": os.pathsep.join(sys.path)})
    effects, marker = tmp_path / "effects.log", tmp_path / "died-once"
    argv = [sys.executable, str(script), str(effects), str(marker), llm.openai_url, saver]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == -9, first.stderr
    assert llm.request_count == 2
    assert effects.read_text().splitlines() == ["search otters"]
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines()[-1] == "Otters use rocks."
    assert llm.request_count == 3  # the two finished LLM calls were replayed from the journal
    assert effects.read_text().splitlines() == ["search otters", "fetch https://otters.example"]
    assert len(_calls("lg-crash", "llm")) == 3 and len(_calls("lg-crash", "tool")) == 2


KILLED_APP = """
import os
from typing import TypedDict

from langgraph.graph import START, StateGraph

import wflo


class S(TypedDict):
    n: int


def node(state: S) -> dict:
    if os.environ.get("DIE"):
        os._exit(9)  # the process dies inside the wrapped run
    return {"n": state["n"] + 1}


b = StateGraph(S)
b.add_node("node", node)
b.add_edge(START, "node")
app = wflo.wrap(b.compile(), name="lg-killed")

if __name__ == "__main__":
    app.invoke({"n": 1}, {"configurable": {"thread_id": "lg-killed-1"}})
"""


def test_a_killed_wrapped_run_is_left_for_its_program_not_failed_by_a_worker_or_the_cli(
    configured: str, tmp_path: Path
) -> None:
    """A wrapped graph's run resumes when its program invokes the graph again on that thread. `wflo
    runs resume` and a worker importing the program executed it without its call: the run failed
    for good, and the next invoke on the thread started a new run (`#2`). They now leave it alone
    (the refusal names `wflo runs resume`, which exists, not `wflo resume`)."""
    (tmp_path / "lgkilled.py").write_text(KILLED_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": configured, "WFLO_LEASE_SECONDS": "1",
                "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])})  # fmt: skip
    app = [sys.executable, str(tmp_path / "lgkilled.py")]
    first = subprocess.run(app, env={**env, "DIE": "1"}, capture_output=True, timeout=60)
    assert first.returncode == 9, first.stderr
    resume = [sys.executable, "-m", "wflo.cli", "runs", "resume", "lg-killed-1", "--import", "lgkilled"]
    out = subprocess.run(resume, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "invoked again with the same config (thread_id)" in out.stderr
    assert "`wflo runs resume`" in out.stderr and "`wflo resume`" not in out.stderr
    time.sleep(1.2)  # the killed process's lease has lapsed: a worker may claim what it serves
    worker = [sys.executable, "-m", "wflo.cli", "worker", "--import", "lgkilled", "--idle-exit", "1"]
    served = subprocess.run(worker, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert served.returncode == 0 and "after 0 run(s)" in served.stdout, served.stdout + served.stderr
    assert wflo.RunHandle("lg-killed-1").status() == "running"
    again = subprocess.run(app, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert wflo.RunHandle("lg-killed-1").status() == "succeeded"
    assert [r.id for r in _config.get_store().list_runs(workflow="lg-killed")] == ["lg-killed-1"]


def test_async_invoke_and_stream(configured: str, llm: LLMServer) -> None:
    import asyncio

    llm.script(Reply("first"), Reply("second"), Reply("third"))
    graph = wrap(build(llm))

    async def go() -> tuple[Any, list[Any]]:
        out = await graph.ainvoke({"messages": [("user", "a")]}, _thread("lg-async"))
        chunks = [c async for c in graph.astream({"messages": [("user", "b")]}, _thread("lg-astream"))]
        return out, chunks

    out, achunks = asyncio.run(go())
    assert out["messages"][-1].content == "first"
    assert achunks[-1]["agent"]["messages"][-1].content == "second"
    chunks = list(graph.stream({"messages": [("user", "c")]}, _thread("lg-stream")))
    assert chunks[-1]["agent"]["messages"][-1].content == "third"
    for run_id in ("lg-async", "lg-astream", "lg-stream"):
        assert wflo.RunHandle(run_id).status() == "succeeded"
        assert len(_calls(run_id, "llm")) == 1


def test_checkpointer_resume_and_interrupt(store_url: str) -> None:
    """LangGraph's own persistence on wflo's store: multi-turn threads and interrupt()."""
    wflo.configure(database=store_url)
    saver = Checkpointer()

    class State(MessagesState):
        approved: str

    def ask(state: State) -> dict[str, Any]:
        answer = interrupt({"question": "send it?"})
        return {"approved": answer}

    g = StateGraph(State)
    g.add_node("ask", ask)
    g.add_edge(START, "ask")
    graph = g.compile(checkpointer=saver)
    config = _thread("cp-1")
    first = graph.invoke({"messages": [("user", "hello")]}, config)
    assert "__interrupt__" in first
    assert graph.get_state(config).next == ("ask",)
    done = graph.invoke(Command(resume="yes"), config)
    assert done["approved"] == "yes"
    history = list(saver.list(config))
    assert len(history) >= 3
    assert saver.get_tuple(config) is not None
    # a fresh saver on the same store sees the same thread
    again = Checkpointer(store_url)
    try:
        state = g.compile(checkpointer=again).get_state(config)
        assert state.values["approved"] == "yes" and len(state.values["messages"]) == 1
    finally:
        again.close()
    saver.delete_thread("cp-1")
    assert saver.get_tuple(config) is None


def test_wrapped_graph_with_checkpointer_has_one_run_per_turn(configured: str, llm: LLMServer) -> None:
    llm.script(Reply("hello there"), Reply("and again"))
    graph = wrap(build(llm, checkpointer=Checkpointer()))
    config = _thread("lg-turns")
    graph.invoke({"messages": [("user", "hi")]}, config)
    out = graph.invoke({"messages": [("user", "more")]}, config)
    assert [m.content for m in out["messages"]] == ["hi", "hello there", "more", "and again"]
    assert wflo.RunHandle("lg-turns").status() == "succeeded"
    assert wflo.RunHandle("lg-turns#2").status() == "succeeded"


def _refund_graph(saver: Any) -> Any:
    class State(MessagesState):
        outcome: str

    def ask(state: State) -> dict[str, Any]:
        answer = interrupt({"action": "refund", "amount": 250})
        if answer["approved"]:
            return {"outcome": f"refunded {answer['value']['amount']}"}
        return {"outcome": f"not refunded: {answer['reason']}"}

    g = StateGraph(State)
    g.add_node("ask", ask)
    g.add_edge(START, "ask")
    return g.compile(checkpointer=saver, name="refunds")


@pytest.mark.parametrize("decision", ["approve", "edit", "reject"])
def test_interrupt_becomes_a_durable_wflo_approval(
    configured: str, monkeypatch: pytest.MonkeyPatch, decision: str
) -> None:
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:agent-owner")
    _config.configure(database=configured, lease_seconds=5.0, poll_interval=0.05)
    approvals.grant("user:fin", "finance")
    saver = Checkpointer()
    graph = wflo.wrap(_refund_graph(saver), interrupts=wflo.Approval(approvers=["role:finance"]))
    run_id = f"lg-intr-{decision}"
    result: dict[str, Any] = {}

    def agent() -> None:
        try:
            result["out"] = graph.invoke({"messages": [("user", "refund order 7")]}, _thread(run_id))
        except BaseException as exc:
            result["error"] = exc

    t = threading.Thread(target=agent)
    t.start()
    deadline = time.monotonic() + 20
    while not approvals.list(run_id=run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    (request,) = approvals.list(run_id=run_id)
    assert '"amount": 250' in request.message
    while wflo.RunHandle(run_id).status() != "waiting" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert wflo.RunHandle(run_id).status() == "waiting"
    if decision == "approve":
        approvals.approve(request.id, principal="user:fin", action_hash=request.action_hash)
    elif decision == "edit":
        edited = {"data": {"action": "refund", "amount": 100}}  # the approver changes the amount
        approvals.approve(request.id, principal="user:fin", action_hash=request.action_hash, args=edited)
    else:
        approvals.reject(request.id, principal="user:fin", reason="over the limit")
    t.join(30)
    assert "error" not in result, result
    expected = {"approve": "refunded 250", "edit": "refunded 100", "reject": "not refunded: over the limit"}[decision]
    assert result["out"]["outcome"] == expected
    assert wflo.RunHandle(run_id).status() == "succeeded"
    saver.close()


def test_interrupts_needs_a_checkpointer(configured: str, llm: LLMServer) -> None:
    with pytest.raises(wflo.UserError, match="needs a graph compiled with a checkpointer"):
        wflo.wrap(build(llm), interrupts=wflo.Approval())


def test_checkpoint_writes_are_fenced_on_the_runs_lease(configured: str) -> None:
    """A worker that lost its run's lease cannot write the graph's state under the new holder."""
    from langgraph.checkpoint.base import empty_checkpoint

    from wflo._errors import LeaseLost
    from wflo.engine import current_run

    saver = Checkpointer()
    config: Any = {"configurable": {"thread_id": "fenced", "checkpoint_ns": ""}}
    seen: dict[str, object] = {}

    @wflo.workflow(name="lg_fenced")
    def fenced() -> str:
        ctx = current_run()
        assert ctx is not None
        saver.put(config, empty_checkpoint(), {}, {})  # the lease is ours: written
        # Another worker takes the run over (this one stalled past its lease).
        ctx.store.read("UPDATE runs SET lease_owner = 'worker:thief' WHERE id = ? RETURNING id", [ctx.run_id])
        try:
            saver.put(config, empty_checkpoint(), {}, {})
        except LeaseLost as exc:
            seen["put"] = exc.owner
        at_x = {"configurable": {**config["configurable"], "checkpoint_id": "x"}}
        try:  # relaxed (an ordinary write)
            saver.put_writes(at_x, [("c", 1)], "t1")
        except LeaseLost as exc:
            seen["put_writes"] = exc.owner
        try:  # waits for the disk (a reserved channel)
            saver.put_writes(at_x, [("__interrupt__", "ok?")], "t2")
        except LeaseLost as exc:
            seen["put_writes reserved"] = exc.owner
        return "done"

    with pytest.raises(LeaseLost):  # the journal's own append is fenced the same way
        fenced.run()
    assert set(seen) == {"put", "put_writes", "put_writes reserved"}
    rows = saver.store.read("SELECT COUNT(*) FROM wflo_lg_checkpoints WHERE thread_id = 'fenced'", [])
    assert rows[0][0] == 1  # only the write made under the lease
    assert saver.store.read("SELECT COUNT(*) FROM wflo_lg_writes WHERE thread_id = 'fenced'", [])[0][0] == 0
    # Outside any run there is no lease to check.
    saver.put(config, empty_checkpoint(), {}, {})


# The checkpointer's tables as wflo created them before m017_ckpt_bytes: values as base64 text.
_OLD_TABLES = (
    """CREATE TABLE IF NOT EXISTS wflo_lg_checkpoints (
        thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '', checkpoint_id TEXT NOT NULL,
        parent_checkpoint_id TEXT, type TEXT, checkpoint TEXT NOT NULL, metadata TEXT NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id))""",
    """CREATE TABLE IF NOT EXISTS wflo_lg_writes (
        thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '', checkpoint_id TEXT NOT NULL,
        task_id TEXT NOT NULL, idx INTEGER NOT NULL, channel TEXT NOT NULL, type TEXT, value TEXT NOT NULL,
        task_path TEXT NOT NULL DEFAULT '', PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx))""",
)


def _interrupting_graph() -> StateGraph[Any]:
    class State(MessagesState):
        approved: str

    def ask(state: State) -> dict[str, Any]:
        return {"approved": interrupt({"question": "send it?"})}

    g = StateGraph(State)
    g.add_node("ask", ask)
    g.add_edge(START, "ask")
    return g


def test_checkpoints_saved_as_base64_before_m017_resume_after_the_upgrade(store_url: str) -> None:
    """A thread saved by the old checkpointer (base64 text, schema before m017) resumes after
    the upgrade; new checkpoints are stored as bytes (BLOB / BYTEA)."""
    import base64
    import json

    from langgraph.checkpoint.base import WRITES_IDX_MAP
    from langgraph.checkpoint.memory import InMemorySaver

    from wflo.integrations._checkpoint_tables import M017_CKPT_BYTES
    from wflo.store import MIGRATIONS, open_store

    # A thread paused on interrupt(), saved as the old checkpointer saved it.
    memory = InMemorySaver()
    config = _thread("old-1")
    assert "__interrupt__" in _interrupting_graph().compile(checkpointer=memory).invoke(
        {"messages": [("user", "hi")]}, config
    )
    saved = list(memory.list(config))
    assert saved and any(t.pending_writes for t in saved)

    def b64(value: Any) -> tuple[str, str]:
        type_, blob = memory.serde.dumps_typed(value)
        return type_, base64.b64encode(blob).decode()

    before = MIGRATIONS.index(M017_CKPT_BYTES)
    old = open_store(store_url, verify=False)

    def old_schema(cur: Any) -> None:
        cur.execute("CREATE TABLE wflo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for migration in MIGRATIONS[:before]:
            for statement in migration.statements(old.dialect):
                cur.execute(statement)
        old.execute(cur, "INSERT INTO wflo_meta (key, value) VALUES ('schema_version', ?)", [str(before)])
        for statement in _OLD_TABLES:
            cur.execute(statement)
        for t in saved:
            conf = t.config["configurable"]
            parent = (t.parent_config or {}).get("configurable", {}).get("checkpoint_id")
            key = [conf["thread_id"], conf["checkpoint_ns"], conf["checkpoint_id"]]
            old.execute(
                cur,
                "INSERT INTO wflo_lg_checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                [*key, parent, *b64(t.checkpoint), json.dumps(t.metadata)],
            )
            for i, (task_id, channel, value) in enumerate(t.pending_writes or ()):
                old.execute(
                    cur,
                    "INSERT INTO wflo_lg_writes VALUES (?, ?, ?, ?, ?, ?, ?, ?, '')",
                    [*key, task_id, WRITES_IDX_MAP.get(channel, i), channel, *b64(value)],
                )

    old.write(old_schema)
    old.close()

    saver = Checkpointer(store_url)  # opens the store: m017 runs here
    try:
        assert saver.store.schema_version() == len(MIGRATIONS)
        graph = _interrupting_graph().compile(checkpointer=saver)
        assert graph.get_state(config).next == ("ask",)
        assert [t.checkpoint["id"] for t in saver.list(config)] == [t.checkpoint["id"] for t in saved]
        done = graph.invoke(Command(resume="yes"), config)
        assert done["approved"] == "yes" and done["messages"][0].content == "hi"
        newest = saver.get_tuple(config)
        assert newest is not None and newest.checkpoint["id"] not in {t.checkpoint["id"] for t in saved}
        if saver.store.dialect == "postgresql":
            types = saver.store.read(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND column_name IN ('checkpoint', 'value') AND table_name IN ('wflo_lg_checkpoints', 'wflo_lg_writes')"
            )
            assert sorted(t for (t,) in types) == ["bytea", "bytea"]
        else:  # SQLite keeps the old rows' text as it was; every new row is a BLOB
            kinds = saver.store.read(
                "SELECT checkpoint_id, typeof(checkpoint) FROM wflo_lg_checkpoints WHERE thread_id = 'old-1'"
            )
            old_ids = {t.checkpoint["id"] for t in saved}
            assert {k for cid, k in kinds if cid in old_ids} == {"text"}
            assert {k for cid, k in kinds if cid not in old_ids} == {"blob"}
    finally:
        saver.close()


def test_a_new_store_has_the_checkpoint_tables_as_bytes(store_url: str) -> None:
    """The store's migrations create the tables (no creation on first use); values are bytes."""
    from langgraph.checkpoint.base import empty_checkpoint

    from wflo.store import open_store

    with open_store(store_url) as store:
        assert store.read("SELECT COUNT(*) FROM wflo_lg_checkpoints") == [(0,)]
    saver = Checkpointer(store_url)
    try:
        config = saver.put(_thread("new-1"), empty_checkpoint(), {}, {})
        saver.put_writes(config, [("c", {"x": 1})], "t1")
        got = saver.get_tuple(config)
        assert got is not None and got.pending_writes == [("t1", "c", {"x": 1})]
        (kind,) = saver.store.read_one("SELECT value FROM wflo_lg_writes") or ()
        assert isinstance(kind, bytes)
    finally:
        saver.close()
