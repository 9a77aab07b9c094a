"""Small helpers the benchmarks share."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

PG = os.environ.get("WFLO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# Prepended to every database name a benchmark creates (and drops first): two benchmarks on
# one server then cannot drop each other's databases.
DB_PREFIX = os.environ.get("WFLO_BENCH_DB_PREFIX", "")


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def fresh_pg(name: str) -> str:
    """A URL of a new, empty PostgreSQL database ``name`` (dropped first if it exists)."""
    import psycopg

    name = DB_PREFIX + name
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return PG.rsplit("/", 1)[0] + "/" + name


def alternate(
    cases: dict[str, Callable[[], Any]], iterations: int, rounds: int, *, warm: int | None = None
) -> list[dict[str, float]]:
    """Per round, the median µs of one call of each case; the cases run in a rotating order
    each iteration, so a slow patch of the (shared, noisy) machine falls on every side alike.

    ``warm`` calls of each case first (default ``max(5, iterations // 10)``).
    """
    names = list(cases)
    for _ in range(max(5, iterations // 10) if warm is None else warm):
        for name in names:
            cases[name]()
    out = []
    for _ in range(rounds):
        samples: dict[str, list[float]] = {n: [] for n in names}
        for i in range(iterations):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter_ns()
                cases[name]()
                samples[name].append((time.perf_counter_ns() - t0) / 1000)
        out.append({n: statistics.median(v) for n, v in samples.items()})
    return out
