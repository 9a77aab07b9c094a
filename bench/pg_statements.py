"""An empty run's two PostgreSQL statements, variant by variant (issue 20, "pgempty").

Each variant is a pair of statements on a connection of its own (prepared there, as the store
prepares them): a run's create (the run and its ``run.created``/``run.started`` events, relaxed
commit) and its end (``run.completed``: status, output, the lease let go, ``wflo_runs``
notified). The variants run in a rotating order every iteration, so a slow patch of the shared
machine falls on all of them alike. For each statement: wall µs (the round trip, the commit
included) and the server's CPU µs (the backend's ``/proc/<pid>/schedstat``, when readable).
Printed per variant: the median of the round medians [min..max of the round medians].

Variants (those whose statement the store does not have are skipped with a note):

- ``raw``: one-row INSERTs into a table with a primary key, relaxed then durable: the floor;
- ``general``: ``_CREATE_RUN_RELAXED`` (events as arrays) and ``wflo_append`` (the statements
  before "pgempty");
- ``store``: the statements the store sends now (``_CREATE_OWNED_RELAXED`` and ``_END``);
- ``no counts``: the store's with triggers off (``session_replication_role = replica``): what
  the status counters (``wflo_run_counts``) cost the two statements;
- ``m020 counts``: the store's statements on a second database whose counters' function is
  m020's (a move's two counts sorted by ``ORDER BY``), against m026's in ``store``.

    python bench/pg_statements.py [--iterations 300] [--rounds 5] [--no-flush]

``--no-flush``: every commit relaxed (the end's flush taken out of its wall time, leaving the
server's work; the statements are otherwise the same).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from _common import PG, fresh_pg

from wflo.store import _postgres as pg
from wflo.store._base import GENESIS, Head, NewEvent, canonical_json, now_iso

_COUNTER = itertools.count()
RAW_TABLE = "CREATE TABLE IF NOT EXISTS bench_raw (id text PRIMARY KEY, v text)"
RAW_INSERT = "INSERT INTO bench_raw (id, v) VALUES (%s, %s)"
RAW_INSERT_RELAXED = (
    "INSERT INTO bench_raw (id, v) VALUES (%s, %s) RETURNING set_config('synchronous_commit', 'off', true)"
)


def _cpu(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except OSError:
        return None


class Side:
    """One connection sending one variant's pair of statements."""

    def __init__(self, url: str, create: tuple[str, Callable[..., tuple[Any, ...]]] | None,
                 end: Callable[..., tuple[str, tuple[Any, ...]]] | None, *, replica: bool = False,
                 no_flush: bool = False) -> None:  # fmt: skip
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        if replica:
            self.conn.execute("SET session_replication_role = replica")
        if no_flush:
            self.conn.execute("SET synchronous_commit = off")
        self.pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.create, self.end = create, end

    def _timed(self, sql: str, params: tuple[Any, ...]) -> tuple[float, float]:
        c0 = _cpu(self.pid)
        t0 = time.perf_counter_ns()
        cur = self.conn.execute(sql, params, prepare=True)
        if cur.description is not None:
            cur.fetchall()
        t1 = time.perf_counter_ns()
        c1 = _cpu(self.pid)
        return (t1 - t0) / 1000, ((c1 - c0) / 1000 if c0 is not None and c1 is not None else float("nan"))

    def once(self) -> tuple[float, float, float, float]:
        n = next(_COUNTER)
        run_id = f"bench-{n:09d}"
        if self.create is None:  # raw
            a = self._timed(RAW_INSERT_RELAXED, (run_id + "a", "x" * 40))
            b = self._timed(RAW_INSERT, (run_id + "b", "x" * 40))
            return (*a, *b)
        now = now_iso()
        events = [NewEvent("run.created", {"workflow": "empty", "input": [[], {}], "parent_id": None, "tenant": None},
                           now), NewEvent("run.started", {"attempt": 1, "worker": "w1"}, now)]  # fmt: skip
        head, rows = pg.PostgresStore._link(run_id, Head(0, GENESIS), events)
        values = (run_id, "empty", "running", canonical_json([[], {}]), None, None, "{}", "w1", head.seq, head.hash, 1,
                  now, now, None, 0, None, now)  # fmt: skip
        sql, params_of = self.create
        a = self._timed(sql, params_of(values, rows, 30.0))
        assert self.end is not None
        sql, params = self.end(run_id, head, now)
        b = self._timed(sql, params)
        return (*a, *b)


def _end_with(lean: bool) -> Callable[..., tuple[str, tuple[Any, ...]]]:
    def end(run_id: str, head: Head, now: str) -> tuple[str, tuple[Any, ...]]:
        new, rows = pg.PostgresStore._link(run_id, head, [NewEvent("run.completed", {"output": None}, now)])
        kind, params = pg._append_statement(
            run_id, head, new, rows, owner="w1", now=now, status="succeeded", finish=True, output_json="null",
            error_json=None, release=False, wake_at=None, notify=True, lean=lean,
        )  # fmt: skip
        return _sql_of(kind), params

    return end


def _array_params(values: tuple[Any, ...], rows: list[tuple[Any, ...]], lease: float) -> tuple[Any, ...]:
    """``_CREATE_RUN``'s parameters (the events as arrays) for a run with an owner."""
    params = list(pg._create_params(values, rows, None))  # enqueued: arrays, notified
    params[8:10] = [True, lease]
    params[-2] = False
    return tuple(params)


def _sql_of(kind: Any) -> str:
    """The durable statement's text for ``_append_statement``'s first answer (a bool before
    m026: ``_STEP`` or ``_APPEND``; since, the statements' pair)."""
    if kind is True:
        return pg._STEP
    if kind is False:
        return pg._APPEND
    return str(kind[0].sql)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-flush", action="store_true", help="every commit relaxed: the server's work alone")
    args = parser.parse_args()

    import psycopg

    from wflo.store._migrations import _PG_RUN_COUNTS_ONE_STATEMENT

    url, url_m020 = fresh_pg("pg_statements"), fresh_pg("pg_statements_m020")
    for u in (url, url_m020):
        store = pg.PostgresStore(u)
        store.ensure_schema()
        store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW_TABLE)
    with psycopg.connect(url_m020, autocommit=True) as conn:
        conn.execute(_PG_RUN_COUNTS_ONE_STATEMENT)
    nf = args.no_flush
    store_create = (pg._CREATE_ALONE[True].sql, pg._create_params)
    sides = {
        "raw": Side(url, None, None, no_flush=nf),
        "general": Side(url, (pg._CREATE_RUN_RELAXED, _array_params), _end_with(False), no_flush=nf),
        "store": Side(url, store_create, _end_with(True), no_flush=nf),
        "no counts": Side(url, store_create, _end_with(True), replica=True, no_flush=nf),
        "m020 counts": Side(url_m020, store_create, _end_with(True), no_flush=nf),
    }
    print(f"# {args.rounds} rounds x {args.iterations} iterations{', no flush' if nf else ''}")
    names = list(sides)
    for _ in range(max(20, args.iterations // 10)):
        for name in names:
            sides[name].once()
    rounds: list[dict[str, list[float]]] = []
    for _ in range(args.rounds):
        samples: dict[str, list[tuple[float, ...]]] = {n: [] for n in names}
        for i in range(args.iterations):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                samples[name].append(sides[name].once())
        rounds.append({n: [statistics.median(col) for col in zip(*v, strict=True)] for n, v in samples.items()})
    print(f"{'variant':<10} {'create wall':>22} {'create cpu':>22} {'end wall':>22} {'end cpu':>22}")
    for name in names:
        cols = list(zip(*(r[name] for r in rounds), strict=True))
        cells = [f"{statistics.median(c):7.0f} [{min(c):4.0f}..{max(c):4.0f}]" for c in cols]
        print(f"{name:<10} " + " ".join(f"{c:>22}" for c in cells))
    for side in sides.values():
        side.conn.close()
    with psycopg.connect(PG, autocommit=True) as conn:
        for u in (url, url_m020):
            conn.execute(f"DROP DATABASE IF EXISTS {u.rsplit('/', 1)[1]} WITH (FORCE)")


if __name__ == "__main__":
    main()
