"""Reading runs at 1,000 and at 1,000,000 finished runs: is there a cliff?

Method. Two stores per backend: one with ``--small`` finished runs, one with ``--large``
(bulk-inserted with ``executemany``, as the engine writes them, spread over 20 workflows and
a year of creation times), each with the same 50 active runs (queued, running, waiting) on
top (PostgreSQL: then vacuumed, as autovacuum would). Each query then runs on both stores alternately, iteration by iteration (the order
flips every iteration), ``--iterations`` per round, ``--rounds`` rounds; reported: the
median µs on each and large ÷ small (median of the round ratios, with their spread). Goal
(issue 20): large ÷ small ≤ 2 for every query.

``--explain`` (PostgreSQL) adds what does not depend on the machine's load: for each listing
query, the shared buffers the server touched and its own execution time, on both stores
(``EXPLAIN (ANALYZE, BUFFERS)`` of the statement ``Store.list_runs`` sends, after a warm-up).

    python bench/listing.py [--large 1000000] [--small 1000] [--stores sqlite,postgres] [--explain] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _common import fresh_pg

from wflo.store import Store, open_store
from wflo.store._records import RUN_COLUMNS

ACTIVE = 50


def fill(store: Store, finished: int) -> float:
    """``finished`` finished runs and ``ACTIVE`` active ones, inserted in bulk."""
    t0 = time.perf_counter()
    sql = store._sql(
        f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, '{{}}', ?, NULL, NULL, NULL, '{{}}', ?, ?, 0, NULL, "
        "3, 'h', 1, ?, ?, ?)"
    )
    batch: list[tuple[Any, ...]] = []

    def flush() -> None:
        store.write(lambda cur: cur.executemany(sql, batch))
        batch.clear()

    start = 1_700_000_000
    for i in range(finished + ACTIVE):
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + i * 31_536_000 // (finished + ACTIVE)))
        at += f".{i % 1_000_000:06d}Z"
        if i < finished:
            status, output, owner, lease = ("succeeded" if i % 10 else "failed"), "1", None, None
        else:
            status = ("queued", "running", "waiting")[i % 3]
            output, owner, lease = None, ("w1" if status == "running" else None), None
        rid = f"{start + i:012x}-{i:08x}-7000-8000-000000000000"
        batch.append((rid, f"wf{i % 20}", status, output, owner, lease, at, at, at if output else None))
        if len(batch) >= 20_000:
            flush()
    flush()
    return time.perf_counter() - t0


def queries(store: Store) -> dict[str, Callable[[], Any]]:
    some = store.read("SELECT id FROM runs WHERE status = 'succeeded' ORDER BY id LIMIT 1 OFFSET 500")[0][0]
    return {
        "get_run": lambda: store.get_run(some),
        "find_run (prefix)": lambda: store.find_run(some[:13]),
        "list_runs (latest 50)": lambda: store.list_runs(limit=50),
        "list_runs status=running": lambda: store.list_runs(status="running", limit=50),
        "list_runs status=succeeded": lambda: store.list_runs(status="succeeded", limit=50),
        "list_runs workflow=wf3": lambda: store.list_runs(workflow="wf3", limit=50),
        "count_runs_by_status": store.count_runs_by_status,
    }


# The statements ``Store.list_runs`` sends for the listing queries above (kept in step by hand;
# ``--explain`` only).
EXPLAINED = {
    "list_runs (latest 50)": ("", ()),
    "list_runs status=running": ("WHERE status = %s", ("running",)),
    "list_runs status=succeeded": ("WHERE status = %s", ("succeeded",)),
    "list_runs workflow=wf3": ("WHERE workflow = %s", ("wf3",)),
}


def explain(url: str) -> dict[str, tuple[int, float]]:
    """Per listing query: (shared buffers hit or read, server execution ms), median of 5."""
    import psycopg

    out: dict[str, tuple[int, float]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name, (where, params) in EXPLAINED.items():
            sql = f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY created_at DESC, id DESC LIMIT 50"
            seen: list[tuple[int, float]] = []
            for _ in range(6):
                plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchone()[0][0]
                top = plan["Plan"]
                seen.append(
                    (top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0), plan["Execution Time"])
                )
            seen = seen[1:]
            out[name] = (int(statistics.median(b for b, _ in seen)), statistics.median(t for _, t in seen))
    return out


def measure(small: Store, large: Store, iterations: int, rounds: int) -> dict[str, dict[str, Any]]:
    qs, ql = queries(small), queries(large)
    out: dict[str, dict[str, Any]] = {}
    for name in qs:
        for _ in range(5):
            qs[name]()
            ql[name]()
        ratios, s_med, l_med = [], [], []
        for _ in range(rounds):
            ts: list[float] = []
            tl: list[float] = []
            for i in range(iterations):
                order = ((qs[name], ts), (ql[name], tl)) if i % 2 else ((ql[name], tl), (qs[name], ts))
                for fn, sink in order:
                    t0 = time.perf_counter_ns()
                    fn()
                    sink.append((time.perf_counter_ns() - t0) / 1000)
            s_med.append(statistics.median(ts))
            l_med.append(statistics.median(tl))
            ratios.append(l_med[-1] / s_med[-1])
        out[name] = {"small_us": statistics.median(s_med), "large_us": statistics.median(l_med),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument(
        "--list-index",
        action="store_true",
        help="add an index on runs (created_at, id) first, as the server's keyset listing brings "
        "(listing the latest runs of all workflows needs one)",
    )
    parser.add_argument("--explain", action="store_true", help="PostgreSQL: buffers and server time per query")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="wflo-bench-")
    results: dict[str, Any] = {}
    for backend in args.stores.split(","):
        if backend == "sqlite":
            urls = f"sqlite:///{tmp}/small.db", f"sqlite:///{tmp}/large.db"
        else:
            urls = fresh_pg("wflo_bench_list_small"), fresh_pg("wflo_bench_list_large")
        with open_store(urls[0]) as small, open_store(urls[1]) as large:
            for st in (small, large) if args.list_index else ():
                st.write(
                    lambda cur: cur.execute("CREATE INDEX IF NOT EXISTS bench_runs_created ON runs (created_at, id)")
                )
            fill(small, args.small)
            fill_s = fill(large, args.large)
            if backend in ("postgresql", "postgres"):
                # What autovacuum does in a running system (the bulk load left a million dead
                # versions of the run counters behind at once).
                import psycopg

                for url in urls:
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute("VACUUM ANALYZE runs")
                        conn.execute("VACUUM ANALYZE run_counts")
            results[backend] = {"fill_s": fill_s, "queries": measure(small, large, args.iterations, args.rounds)}
            if args.explain and backend in ("postgresql", "postgres"):
                results[backend]["explain"] = {"small": explain(urls[0]), "large": explain(urls[1])}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"reading runs: {args.small:,} vs {args.large:,} finished runs (+{ACTIVE} active), alternating, "
          f"{args.rounds} rounds x {args.iterations}"
          + (", with an index on runs (created_at, id)" if args.list_index else ""))  # fmt: skip
    for backend, r in results.items():
        print(f"\n{backend} (bulk insert of the large store: {r['fill_s']:.0f} s)")
        print(f"  {'query':28} {'small µs':>9} {'large µs':>9} {'large/small':>12} {'spread':>14}")
        for name, q in r["queries"].items():
            spread = f"{q['ratio_min']:.2f}..{q['ratio_max']:.2f}"
            print(f"  {name:28} {q['small_us']:9.0f} {q['large_us']:9.0f} {q['ratio']:12.2f} {spread:>14}")
        if "explain" in r:
            print("  on the server (EXPLAIN ANALYZE, median of 5): buffers and ms, small vs large")
            for name, (b_s, t_s) in r["explain"]["small"].items():
                b_l, t_l = r["explain"]["large"][name]
                print(f"  {name:28} {b_s:4d} vs {b_l:4d} buffers   {t_s:.3f} vs {t_l:.3f} ms")


if __name__ == "__main__":
    main()
