"""Small helpers the benchmarks share."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PG = os.environ.get("WFLO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# Prepended to every database name a benchmark creates (and drops first): two benchmarks on
# one server then cannot drop each other's databases.
DB_PREFIX = os.environ.get("WFLO_BENCH_DB_PREFIX", "")
HERE = Path(__file__).parent


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
    return alternate_timed({name: _timed(fn) for name, fn in cases.items()}, iterations, rounds, warm=warm)


def _timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def timed() -> float:
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / 1000

    return timed


def alternate_timed(
    cases: dict[str, Callable[[], float]], iterations: int, rounds: int, *, warm: int | None = None,
    sides: list[list[str]] | None = None,
) -> list[dict[str, float]]:  # fmt: skip
    """:func:`alternate` for cases that time themselves: each call returns its own µs (a
    :class:`Child`'s case, timed in its process, without the pipe's cost).

    ``sides``: the cases' names grouped by the process that runs them. Then no case follows a
    case of its own process (when no process has more than half the cases; else as few as can):
    each case first wakes its process and its database connection, which costs about a commit
    on this VM, so a case that always follows its own process's case reads faster than one that
    always follows another's. A plain rotation gave that bias to fixed cases (``wflo async
    empty`` always after ``wflo steps``, ``wflo empty`` always after the raw commit's process).
    """
    names = list(cases)
    order = (lambda i: _spread(sides, i)) if sides else (lambda i: names[i % len(names) :] + names[: i % len(names)])
    for i in range(max(5, iterations // 10) if warm is None else warm):
        for name in order(i):
            cases[name]()
    out = []
    for _ in range(rounds):
        samples: dict[str, list[float]] = {n: [] for n in names}
        for i in range(iterations):
            for name in order(i):
                samples[name].append(cases[name]())
        out.append({n: statistics.median(v) for n, v in samples.items()})
    return out


def _spread(sides: list[list[str]], i: int) -> list[str]:
    """Iteration ``i``'s order of the cases of ``sides`` (names grouped by process): the same
    pattern of processes every iteration, laid out so that no two neighbours, the last and the
    first included (the next iteration follows on), are of one process when none has more
    than half the cases; each process's own cases rotated through its places from iteration to
    iteration (so a slow patch of the machine falls on every case alike)."""
    by_size = sorted(range(len(sides)), key=lambda k: -len(sides[k]))
    slots = [k for k in by_size for _ in sides[k]]
    n = len(slots)
    pattern: list[int] = [0] * n
    # The largest process's cases first, into every other place, then the rest: 0, 2, 4, …, 1, 3, …
    for place, k in zip(list(range(0, n, 2)) + list(range(1, n, 2)), slots, strict=True):
        pattern[place] = k
    taken = [0] * len(sides)
    order = []
    for k in pattern:
        own = sides[k]
        order.append(own[(taken[k] + i) % len(own)])
        taken[k] += 1
    return order


_CHILD = """
import importlib, json, os, sys, time
sys.path.insert(0, sys.argv[1])
module, _, factory = sys.argv[2].partition(":")
cases = getattr(importlib.import_module(module), factory)(*json.loads(sys.argv[3]))
print(json.dumps(cases if isinstance(cases, str) else list(cases)), flush=True)
if not isinstance(cases, str):
    for line in sys.stdin:
        fn = cases[line.strip()]
        t0 = time.perf_counter_ns()
        fn()
        print((time.perf_counter_ns() - t0) / 1000, flush=True)
sys.stdout.flush()
os._exit(0)  # a peer's non-daemon threads must not keep the process alive
"""


class Child:
    """One side of a benchmark in a process of its own.

    ``factory`` (``"module:function"``, a module of ``bench/``) is called there with ``args``
    and returns the side's cases (name → callable), or a string saying why there are none
    (:attr:`skipped`). :meth:`case` gives a callable that runs one case once in that process
    and returns its µs, timed there: the pipe is not timed. Sides in separate processes do not
    tax each other: one engine's background threads (pollers, listeners, heartbeats) contend
    for the other's GIL when both are loaded in one process. ``pythonpath``: the ``src``
    folder the process imports wflo from (default: as this process does).
    """

    def __init__(self, factory: str, *args: Any, pythonpath: str | None = None) -> None:
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = str(Path(pythonpath).resolve())
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(HERE), factory, json.dumps(args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self._names: Any = None

    @property
    def names(self) -> list[str]:
        """The side's case names (none when it is skipped)."""
        self._started()
        return [] if isinstance(self._names, str) else list(self._names)

    @property
    def skipped(self) -> str | None:
        """Why the side has no cases (its factory's answer), or None."""
        self._started()
        return self._names if isinstance(self._names, str) else None

    def _started(self) -> None:
        if self._names is None:
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"benchmark child exited with {self._proc.wait()} before its cases were ready")
            self._names = json.loads(line)

    def case(self, name: str) -> Callable[[], float]:
        def run() -> float:
            self._started()
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(name + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"benchmark child exited with {self._proc.wait()} while running {name!r}")
            return float(line)

        return run

    def cases(self) -> dict[str, Callable[[], float]]:
        return {name: self.case(name) for name in self.names}

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
