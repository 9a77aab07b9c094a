"""Child process for test_langgraph_durability: runs a graph on wflo's Checkpointer (SQLite at
synchronous=FULL) and marks phases with ``getppid()`` calls, which strace records."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

import wflo
from wflo.integrations.langgraph import Checkpointer


class State(TypedDict):
    n: int


def chain(saver: Any, nodes: int) -> Any:
    g = StateGraph(State)
    for i in range(nodes):
        g.add_node(f"n{i}", lambda s: {"n": s["n"] + 1})
    g.add_edge(START, "n0")
    for i in range(nodes - 1):
        g.add_edge(f"n{i}", f"n{i + 1}")
    g.add_edge(f"n{nodes - 1}", END)
    return g.compile(checkpointer=saver)


def asks(saver: Any, sibling: bool) -> Any:
    """One node, then a step where one task asks a human (and a sibling finishes after it)."""
    g = StateGraph(State)
    g.add_node("first", lambda s: {"n": s["n"] + 1})

    def ask(s: State) -> dict[str, int]:
        interrupt("ok?")
        return {}

    def slow(s: State) -> dict[str, int]:
        time.sleep(0.3)  # finishes (and saves its writes) after its sibling interrupted
        return {"n": s["n"] + 10}

    g.add_node("ask", ask)
    g.add_edge(START, "first")
    g.add_edge("first", "ask")
    g.add_edge("ask", END)
    if sibling:
        g.add_node("slow", slow)
        g.add_edge("first", "slow")
        g.add_edge("slow", END)
    return g.compile(checkpointer=saver)


def main() -> None:
    db, what = sys.argv[1], sys.argv[2]
    wflo.configure(database=f"sqlite:///{db}?synchronous=FULL")
    saver = Checkpointer()
    saver.store.ensure_schema()
    if what == "chain":
        nodes = int(sys.argv[3])
        graph = chain(saver, nodes)
        graph.invoke({"n": 0}, {"configurable": {"thread_id": "warm"}})
        os.getppid()  # mark: start
        out = graph.invoke({"n": 0}, {"configurable": {"thread_id": "t"}})
        os.getppid()  # mark: end
        assert out["n"] == nodes, out
    elif what in ("interrupt", "interrupt+sibling"):
        graph = asks(saver, what == "interrupt+sibling")
        out = graph.invoke({"n": 0}, {"configurable": {"thread_id": "t"}})
        assert "__interrupt__" in out, out
        os.getppid()  # mark: the graph stopped; the caller now waits for a human
        time.sleep(float(sys.argv[3]))
        os.getppid()  # mark: end of the wait
    elif what == "put_writes":
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        from langgraph.checkpoint.base import empty_checkpoint

        cp = empty_checkpoint()
        saved = saver.put(config, cp, {"step": 0}, {})
        saver.put_writes(saved, [("n", 41), ("m", "x")], "task-1")
        print("written", flush=True)
        time.sleep(60)  # killed here
    print("done", flush=True)


if __name__ == "__main__":
    main()
