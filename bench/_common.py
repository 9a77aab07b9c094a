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


class RunFiller:
    """Rows of runs with real link hashes, and their spend book rows, inserted in bulk.

    The benches build a large store without running workflows: ``add`` links a run's events as
    the store would (so the chain verifies) and keeps its ``runs`` row; ``insert`` writes them all
    at once (``COPY`` on PostgreSQL, ``executemany`` on SQLite) and refreshes the planner's
    statistics, so the queries measured afterwards see the table sizes.
    """

    EVENT_COLUMNS = "chain, seq, type, at, data, prev_hash, hash"
    BOOK_COLUMNS = "hour, run_id, model, workflow, tenant, calls, cost_usd, estimated_usd, input_tokens, output_tokens"

    def __init__(self) -> None:
        self.runs: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.book: list[tuple[Any, ...]] = []

    def add(self, run_id: str, workflow: str, status: str, tenant: str, events: list[Any], *, created: str,
            finished: str | None, input: str = "{}", error: str | None = None) -> None:  # fmt: skip
        """One run: its ``events`` (``NewEvent``s, the first its ``run.created``) linked from genesis."""
        from wflo.store import GENESIS, Head, Store

        head, rows = Store._link(run_id, Head(0, GENESIS), events)
        self.events += rows
        self.runs.append((run_id, workflow, status, input, None, error, None, tenant, "{}", None, None, 0, None,
                          head.seq, head.hash, 1, created, created, finished))  # fmt: skip

    def insert(self, store: Any, *, analyze: bool = True) -> None:
        """Write the rows collected so far into ``store``'s runs, events and ledger_spend tables."""
        from wflo.store._records import RUN_COLUMNS

        tables = [("runs", RUN_COLUMNS, self.runs), ("events", self.EVENT_COLUMNS, self.events)]
        if self.book:
            tables.append(("ledger_spend", self.BOOK_COLUMNS, self.book))
        if store.dialect == "postgresql":
            import psycopg

            with psycopg.connect(store.url, autocommit=True) as conn, conn.cursor() as cur:
                for table, cols, rows in tables:
                    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as cp:
                        for r in rows:
                            cp.write_row(r)
        else:

            def go(cur: Any) -> None:
                for table, cols, rows in tables:
                    marks = ", ".join("?" * len(cols.split(",")))
                    cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)

            store.write(go)
        if analyze:
            store.write(lambda cur: cur.execute("ANALYZE"))
