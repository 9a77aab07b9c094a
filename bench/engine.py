"""Per-step overhead of wflo beside DBOS Transact, on SQLite and PostgreSQL, in one run.

Method: a workflow of 10 tiny steps (each returns ``i + 1``) runs ``--runs`` times after a
warm-up, on each engine and store. Per-step overhead = (median workflow time - the same body
without any engine) / 10, reported as median and p99 of the per-run figures, plus workflows per
second (sequential). Durability is matched: every step is committed before the workflow goes
on, on both engines. On SQLite DBOS uses its default rollback journal with ``synchronous=FULL``
(an fsync per commit); wflo is measured with ``synchronous=FULL`` (same durability, in WAL
mode) and with its default ``NORMAL`` (survives process crashes; an OS crash may lose the last
commits). On PostgreSQL both commit synchronously (``synchronous_commit=on``).

    python bench/engine.py [--runs 200] [--stores sqlite,postgres] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _common import fresh_pg, pct

STEPS = 10


def _measure(run_once: Callable[[], Any], runs: int, baseline_ns: float) -> dict[str, float]:
    for _ in range(max(5, runs // 20)):
        run_once()
    per_step = []
    t_all = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        run_once()
        per_step.append((time.perf_counter_ns() - t0 - baseline_ns) / STEPS / 1000)
    elapsed = time.perf_counter() - t_all
    return {
        "step_median_us": statistics.median(per_step),
        "step_p99_us": pct(per_step, 0.99),
        "workflows_per_s": runs / elapsed,
    }


def _baseline() -> float:
    def body() -> int:
        return sum(i + 1 for i in range(STEPS))

    samples = []
    for _ in range(1000):
        t0 = time.perf_counter_ns()
        body()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples)


def bench_wflo(url: str, runs: int, baseline: float) -> dict[str, float]:
    import wflo

    wflo.configure(database=url)

    @wflo.step
    def tiny(i: int) -> int:
        return i + 1

    @wflo.workflow(name="bench.tiny", guards=False)
    def flow() -> int:
        return sum(tiny(i) for i in range(STEPS))

    result = _measure(flow.run, runs, baseline)
    from wflo import _config

    _config.reset()
    return result


def bench_dbos(url: str, runs: int, baseline: float) -> dict[str, float] | str:
    try:
        from dbos import DBOS
    except ImportError:
        return "dbos not installed (pip install dbos)"
    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(config={"name": "wflobench", "system_database_url": url, "run_admin_server": False})  # type: ignore[typeddict-unknown-key]

    @DBOS.step()
    def tiny(i: int) -> int:
        return i + 1

    @DBOS.workflow()
    def flow() -> int:
        return sum(tiny(i) for i in range(STEPS))

    DBOS.launch()
    try:
        return _measure(flow, runs, baseline)
    finally:
        DBOS.destroy(destroy_registry=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    baseline = _baseline()
    rows: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="wflo-bench-")
    for store in args.stores.split(","):
        if store == "sqlite":
            cases = [
                (
                    "wflo (synchronous=FULL)",
                    lambda: bench_wflo(f"sqlite:///{tmp}/wflo-full.db?synchronous=FULL", args.runs, baseline),
                ),
                ("wflo (default, NORMAL)", lambda: bench_wflo(f"sqlite:///{tmp}/wflo.db", args.runs, baseline)),
                ("DBOS Transact", lambda: bench_dbos(f"sqlite:///{tmp}/dbos.sqlite", args.runs, baseline)),
            ]
        else:
            cases = [
                ("wflo", lambda: bench_wflo(fresh_pg("wflo_bench_engine"), args.runs, baseline)),
                ("DBOS Transact", lambda: bench_dbos(fresh_pg("dbos_bench_engine"), args.runs, baseline)),
            ]
        for engine, fn in cases:
            result = fn()
            rows.append(
                {"store": store, "engine": engine, **(result if isinstance(result, dict) else {"error": result})}
            )
    dbos = {r["store"]: r for r in rows if r["engine"] == "DBOS Transact" and "step_median_us" in r}
    for r in rows:
        peer = dbos.get(r["store"])
        if peer and "step_median_us" in r and r["engine"] != "DBOS Transact":
            r["ratio_vs_dbos"] = r["step_median_us"] / peer["step_median_us"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"per-step overhead, {STEPS}-step workflow of tiny steps, {args.runs} runs (python {sys.version.split()[0]})")
    print(f"{'store':9} {'engine':26} {'median µs':>10} {'p99 µs':>10} {'wf/s':>8} {'wflo/DBOS':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['store']:9} {r['engine']:26} {r['error']}")
            continue
        ratio = f"{r['ratio_vs_dbos']:.2f}" if "ratio_vs_dbos" in r else "-"
        print(
            f"{r['store']:9} {r['engine']:26} {r['step_median_us']:10.0f} {r['step_p99_us']:10.0f} {r['workflows_per_s']:8.1f} {ratio:>10}"
        )


if __name__ == "__main__":
    main()
