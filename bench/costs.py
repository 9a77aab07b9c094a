"""The costs query at scale: the spend book against a scan of the journal.

Method. A fresh store gets ``--calls`` charged LLM and priced tool calls (50,000 by default)
in runs of ``--per-run`` calls (10, each run using two of 6 models and a priced tool), across
20 workflows, 10 tenants and 30 days,
each call event with its recorded answer (as the journal keeps it), inserted directly
(``executemany`` on SQLite, ``COPY`` on PostgreSQL); then the spend book is filled the way
migration m017 fills an upgraded store (its time is printed too). Each round asks, for each
query (by model, by day split by model, one tenant by workflow, the top runs), the book
(``wflo.cost._spend.spend``/``top_runs``, what the costs API answers) and the journal scan
(``journal_spend``, what it answered before), alternating which side goes first, ``--rounds``
times; the median and spread (min-max) of each are printed, and both sides' totals are checked
equal.

    python bench/costs.py [--store sqlite|postgres|both] [--calls 50000] [--per-run 10] [--rounds 7]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import RunFiller, fresh_pg

from wflo.cost import _tables
from wflo.cost._spend import journal_spend, spend, top_runs
from wflo.store import NewEvent, Store, open_store

MODELS = ("gpt-4o-mini", "gpt-4o", "claude-3-5-haiku-latest", "claude-sonnet-4", "gemini-2.0-flash", "tool:search")


def _call(i: int, rnd: random.Random, models: list[str]) -> dict[str, Any]:
    model = models[rnd.randrange(len(models))]
    if model.startswith("tool:"):
        return {"kind": "tool", "call": str(i), "name": "search", "cost_usd": "0.005", "ms": 3.1,
                "output": f"{i} results"}  # fmt: skip
    tokens_in, tokens_out = rnd.randrange(50, 4000), rnd.randrange(10, 800)
    answer = {"choices": [{"message": {"role": "assistant", "content": f"answer {i}: " + "otters " * 40}}],
              "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}}  # fmt: skip
    return {
        "kind": "llm", "call": str(i), "name": model, "provider": "openai", "ms": 800.0,
        "cost_usd": str(tokens_in * 15 + tokens_out * 60) + "E-8", "usage": {"input_tokens": tokens_in,
        "output_tokens": tokens_out}, "output": {"body": json.dumps(answer), "status": 200},
    }  # fmt: skip


def fill(store: Store, calls: int, per_run: int) -> float:
    """Insert the runs and their calls; fill the book as m017 does. The book's fill time (s)."""
    rnd = random.Random(11)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    filler = RunFiller()
    for n in range(calls // per_run):
        rid = f"{n:08d}-{rnd.getrandbits(64):016x}"
        moment = start + timedelta(seconds=n * (30 * 86400 // max(1, calls // per_run)))
        created = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        wf, tenant = f"wf-{rnd.randrange(20)}", f"t{rnd.randrange(10)}"
        evs = [NewEvent("run.created", {"workflow": wf, "input": {}, "tenant": tenant}, created)]
        models = rnd.sample(MODELS, 2)  # a run's agent uses a model or two (or a priced tool)
        for i in range(per_run):
            at = (moment + timedelta(seconds=20 * i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            evs.append(NewEvent("call.completed", _call(i + 1, rnd, models), at))
        filler.add(rid, wf, "succeeded", tenant, evs, created=created, finished=created)
    filler.insert(store, analyze=False)
    t0 = time.perf_counter()
    store.write(lambda cur: _tables.M018_LEDGER_SPEND.then(store, cur))  # type: ignore[misc]
    filled = time.perf_counter() - t0
    store.write(lambda cur: cur.execute("ANALYZE"))
    return filled


def _journal_top(store: Store) -> Any:
    # The journal's top runs: the per-run totals of the scan (what top_runs summed before).
    rows = journal_spend(store, "run")["rows"]
    return sorted(rows, key=lambda r: (-float(r["cost_usd"]), r["key"]))[:10]


def run(kind: str, calls: int, per_run: int, rounds: int) -> None:
    url = fresh_pg("wflo_bench_costs") if kind == "postgres" else f"sqlite:///{tempfile.mkdtemp()}/costs.db"
    store = open_store(url)
    try:
        filled = fill(store, calls, per_run)
        book_rows = store.read("SELECT COUNT(*) FROM ledger_spend")[0][0]
        print(f"\n{kind}: {calls:,} calls in {calls // per_run:,} runs; book filled (m017) in {filled:.2f} s, "
              f"{book_rows:,} rows")  # fmt: skip
        queries: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
            "by model": (lambda: spend(store, "model"), lambda: journal_spend(store, "model")),
            "by day, split by model": (
                lambda: spend(store, "day", split="model"), lambda: journal_spend(store, "day", split="model"),
            ),
            "one tenant by workflow": (
                lambda: spend(store, "workflow", tenant="t3"), lambda: journal_spend(store, "workflow", tenant="t3"),
            ),
            "top runs": (lambda: top_runs(store), lambda: _journal_top(store)),
        }  # fmt: skip
        book_m, journal_m = spend(store, "model"), journal_spend(store, "model")
        assert book_m["total"] == journal_m["total"], (book_m["total"], journal_m["total"])
        print(f"  {'query':<26} {'book median (min-max)':>26} {'journal scan median (min-max)':>32}  speed-up")
        for name, (book, scan) in queries.items():
            times: dict[str, list[float]] = {"book": [], "scan": []}
            for r in range(rounds):
                order = [("book", book), ("scan", scan)] if r % 2 == 0 else [("scan", scan), ("book", book)]
                for side, fn in order:
                    t0 = time.perf_counter()
                    fn()
                    times[side].append((time.perf_counter() - t0) * 1000)
            b, s = times["book"], times["scan"]
            mb, ms = statistics.median(b), statistics.median(s)
            print(f"  {name:<26} {mb:>9.1f} ms ({min(b):.1f}-{max(b):.1f}) {ms:>14.1f} ms ({min(s):.1f}-{max(s):.1f})"
                  f"  {ms / mb:6.1f}x")  # fmt: skip
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--calls", type=int, default=50_000)
    ap.add_argument("--per-run", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    for kind in ("sqlite", "postgres") if args.store == "both" else (args.store,):
        run(kind, args.calls, args.per_run, args.rounds)


if __name__ == "__main__":
    main()
