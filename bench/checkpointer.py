"""wflo's LangGraph ``Checkpointer`` beside LangGraph's own savers, per node.

Method. The same graph (5 nodes in a row, each adds 1 to the state) is compiled once with
each saver and invoked on a new thread per invocation; per node = invocation time ÷ 5 (a
checkpoint and the node's writes are saved per step). "continued thread" invokes it again
and again on one thread per saver, made in setup, as a conversation goes on: each invocation
first reads the thread's latest checkpoint (``get_tuple`` finds one, where on a new thread
it finds none); its ratio is against LangGraph's saver continuing a thread of its own.
"get_tuple" times that read alone, per call, of a checkpoint with 3 pending writes. Each
kind of case (new thread, continued thread, get_tuple) alternates with its LangGraph peer on
its own: invocation by invocation (the order rotates every iteration), ``--iterations`` per
round, ``--rounds`` rounds; figures are the median of the round medians with their spread,
and the ratio wflo ÷ LangGraph per round. Durability is matched on SQLite (LangGraph's
``SqliteSaver`` on a default connection commits with ``synchronous=FULL``; wflo's store is
given ``synchronous=FULL``); on PostgreSQL both commit synchronously. "wflo in a run" is the
same checkpointer used inside a wflo run, as ``wflo.langgraph.wrap`` uses it: each write is
also fenced on the run's lease.

    python bench/checkpointer.py [--iterations 40] [--rounds 5] [--stores sqlite,postgres] [--json]

Needs ``langgraph-checkpoint-sqlite`` and ``langgraph-checkpoint-postgres`` for the peers.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import contextlib
import json
import sqlite3
import statistics
import tempfile
import uuid
from collections.abc import Callable
from typing import Any, TypedDict

from _common import alternate, fresh_pg

NODES = 5
CONTINUED = ", continued thread"
GET = ", get_tuple"  # a case timing one get_tuple call (not an invocation ÷ NODES)


class State(TypedDict):
    n: int


def graph(saver: Any) -> Any:
    from langgraph.graph import END, START, StateGraph

    g = StateGraph(State)
    for i in range(NODES):
        g.add_node(f"n{i}", lambda s: {"n": s["n"] + 1})
    g.add_edge(START, "n0")
    for i in range(NODES - 1):
        g.add_edge(f"n{i}", f"n{i + 1}")
    g.add_edge(f"n{NODES - 1}", END)
    return g.compile(checkpointer=saver)


def invoker(compiled: Any) -> Callable[[], Any]:
    def once() -> Any:
        out = compiled.invoke({"n": 0}, {"configurable": {"thread_id": uuid.uuid4().hex}})
        assert out["n"] == NODES
        return out

    return once


def continuer(compiled: Any) -> Callable[[], Any]:
    """Invoke ``compiled`` on one thread, the same each time (so each invocation continues it)."""
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}

    def once() -> Any:
        out = compiled.invoke({"n": 0}, config)
        assert out["n"] == NODES
        return out

    once()  # the thread holds checkpoints before the first timed invocation
    return once


def getter(saver: Any) -> Callable[[], Any]:
    """``saver.get_tuple`` of a thread's latest checkpoint, which has pending writes (3, from 2
    tasks, as a node that failed beside one that finished leaves them): the read a graph makes
    first when it continues or resumes a thread, alone."""
    from langgraph.checkpoint.base import empty_checkpoint

    config = {"configurable": {"thread_id": uuid.uuid4().hex, "checkpoint_ns": ""}}
    saved = saver.put(config, {**empty_checkpoint(), "channel_values": {"n": 1}}, {"step": 1}, {})
    saver.put_writes(saved, [("n", 2), ("log", "done")], "task-a")
    saver.put_writes(saved, [("n", 3)], "task-b")

    def once() -> Any:
        found = saver.get_tuple(config)
        assert found is not None and len(found.pending_writes) == 3
        return found

    return once


def in_a_run(compiled: Any) -> Callable[[], Any]:
    import wflo

    @wflo.workflow(name=f"bench.lg.{uuid.uuid4().hex[:6]}", guards=False)
    def run() -> int:
        return int(invoker(compiled)()["n"])

    return run.run


def cases(store: str, stack: contextlib.ExitStack, tmp: str) -> dict[str, Callable[[], Any]] | str:
    import wflo
    from wflo.integrations.langgraph import Checkpointer

    out: dict[str, Callable[[], Any]] = {}
    if store == "sqlite":
        try:
            from langgraph.checkpoint.sqlite import SqliteSaver
        except ImportError:
            return "langgraph-checkpoint-sqlite is not installed"
        wflo.configure(database=f"sqlite:///{tmp}/wflo.db?synchronous=FULL")
        peer = SqliteSaver(sqlite3.connect(f"{tmp}/lg.db", check_same_thread=False))
        peer.setup()
        out["LangGraph SqliteSaver"] = invoker(graph(peer))
        out[f"LangGraph SqliteSaver{CONTINUED}"] = continuer(graph(peer))
        out[f"LangGraph SqliteSaver{GET}"] = getter(peer)
    else:
        try:
            from langgraph.checkpoint.postgres import PostgresSaver
        except ImportError:
            return "langgraph-checkpoint-postgres is not installed"
        wflo.configure(database=fresh_pg("wflo_bench_lg"))
        peer = stack.enter_context(PostgresSaver.from_conn_string(fresh_pg("lg_bench_lg")))
        peer.setup()
        out["LangGraph PostgresSaver"] = invoker(graph(peer))
        out[f"LangGraph PostgresSaver{CONTINUED}"] = continuer(graph(peer))
        out[f"LangGraph PostgresSaver{GET}"] = getter(peer)
    saver = Checkpointer()
    out["wflo Checkpointer"] = invoker(graph(saver))
    out["wflo in a run"] = in_a_run(graph(saver))
    out[f"wflo Checkpointer{CONTINUED}"] = continuer(graph(saver))
    out[f"wflo Checkpointer{GET}"] = getter(saver)
    return out


def kind(name: str) -> str:
    return next((k for k in (CONTINUED, GET) if name.endswith(k)), "")


def peer_of(name: str, names: list[str]) -> str:
    """The LangGraph case ``name`` is compared with: the same kind (new thread, continued
    thread, get_tuple alone) on LangGraph's saver."""
    return next(n for n in names if n.startswith("LangGraph") and kind(n) == kind(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from wflo import _config

    tmp = tempfile.mkdtemp(prefix="wflo-bench-")
    results: dict[str, Any] = {}
    for store in args.stores.split(","):
        with contextlib.ExitStack() as stack:
            fns = cases(store, stack, tmp)
            if isinstance(fns, str):
                results[store] = {"error": fns}
                continue
            # Each kind (new thread, continued thread, get_tuple alone) alternates on its own: a
            # case's figure then never carries the tail of another kind's work (a graph's relaxed
            # writes being flushed in the background while a 100 µs read is timed). µs per
            # invocation ÷ NODES: per node (a checkpoint and the node's writes each); get_tuple: per call.
            rounds: list[dict[str, float]] = [{} for _ in range(args.rounds)]
            for k in dict.fromkeys(kind(n) for n in fns):
                group = {n: fn for n, fn in fns.items() if kind(n) == k}
                for merged, r in zip(rounds, alternate(group, args.iterations, args.rounds, warm=5), strict=True):
                    merged.update({n: us / (1 if k == GET else NODES) for n, us in r.items()})
            figures: dict[str, Any] = {}
            for name in fns:
                peer = peer_of(name, list(fns))
                meds = [r[name] for r in rounds]
                ratios = [r[name] / r[peer] for r in rounds]
                figures[name] = {"us": statistics.median(meds), "min": min(meds), "max": max(meds),
                                 "ratio": statistics.median(ratios), "ratio_min": min(ratios),
                                 "ratio_max": max(ratios)}  # fmt: skip
            results[store] = figures
            _config.reset()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"LangGraph checkpoint savers, per node, alternating, {args.rounds} rounds x {args.iterations} invocations "
          f"of a {NODES}-node graph (get_tuple: per call); median of round medians [spread]")  # fmt: skip
    for store, figures in results.items():
        print(f"\n{store}")
        if "error" in figures:
            print(f"  {figures['error']}")
            continue
        for name, f in figures.items():
            print(f"  {name:44} {f['us']:8.0f} µs [{f['min']:.0f}..{f['max']:.0f}]   "
                  f"÷ LangGraph {f['ratio']:.2f} [{f['ratio_min']:.2f}..{f['ratio_max']:.2f}]")  # fmt: skip


if __name__ == "__main__":
    main()
