"""What reading the store's clock costs a shared rate limit's take.

A shared bucket (``wflo.guards._policies.SharedRateLimit``) refills on the store's clock, read in
the take's transaction (``wflo.guards._tables.clock``): on PostgreSQL one more statement in it.
Each round times ``--takes`` takes (one request bucket and one token bucket, never short) with
the store's clock, then the same with this process's clock (``time.time``, what it used before),
the two sides alternating round by round; prints each side's median time per take and spread.

    python bench/ratelimit.py [--rounds 7] [--takes 300] [--store sqlite|postgres|both] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent.parent / "src"))
_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import argparse
import json
import statistics
import tempfile
import time
from typing import Any

from _common import fresh_pg

from wflo.guards import _tables
from wflo.guards._policies import SharedRateLimit
from wflo.store import Store, open_store

STORE_CLOCK = _tables.clock


def process_clock(store: Store, cur: Any) -> float:
    return time.time()


def one_round(store: Store, clock: Any, takes: int, target: str) -> float:
    """Microseconds per take, with ``clock`` as the buckets' clock."""
    _tables.clock = clock
    limit = SharedRateLimit(target, requests_per_minute=1e9, tokens_per_minute=1e12, max_wait=0)
    t0 = time.perf_counter()
    for _ in range(takes):
        assert limit.try_take(store, 100) == 0.0
    return (time.perf_counter() - t0) / takes * 1e6


def bench(url: str, rounds: int, takes: int) -> dict[str, list[float]]:
    store = open_store(url)
    sides: dict[str, list[float]] = {"store clock": [], "process clock": []}
    try:
        one_round(store, STORE_CLOCK, takes // 5, "model:warm")
        for r in range(rounds):
            order = [("store clock", STORE_CLOCK), ("process clock", process_clock)]
            for name, clock in order if r % 2 == 0 else order[::-1]:
                sides[name].append(one_round(store, clock, takes, f"model:{name[:5]}"))
    finally:
        _tables.clock = STORE_CLOCK
        store.close()
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--takes", type=int, default=300)
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    urls = {}
    if args.store in ("sqlite", "both"):
        urls["sqlite"] = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    if args.store in ("postgres", "both"):
        urls["postgres"] = fresh_pg("wflo_bench_ratelimit")
    results = {name: bench(url, args.rounds, args.takes) for name, url in urls.items()}
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.rounds} rounds x {args.takes} takes, sides alternating; µs per take (a shared machine: noisy)")
    for name, sides in results.items():
        for side, values in sides.items():
            print(
                f"  {name:8} {side:13} median {statistics.median(values):8.1f}"
                f"  min {min(values):8.1f}  max {max(values):8.1f}"
            )


if __name__ == "__main__":
    main()
