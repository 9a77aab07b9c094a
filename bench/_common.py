"""Small helpers the benchmarks share."""

from __future__ import annotations

import os

PG = os.environ.get("WFLO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def fresh_pg(name: str) -> str:
    """A URL of a new, empty PostgreSQL database ``name`` (dropped first if it exists)."""
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return PG.rsplit("/", 1)[0] + "/" + name
