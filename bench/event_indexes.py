"""What the indexes on ``events`` cost a step, and what they buy the reads by type or time.

Method. *Writes*: SQLite (WAL, ``synchronous=FULL``): a workflow of ``--steps`` steps and an
empty one run on the engine, each after a ``wal_checkpoint(TRUNCATE)``; the WAL frames each
left, (steps - empty) / steps, three times. PostgreSQL: ``EXPLAIN (ANALYZE, BUFFERS, WAL)`` of
a step's ``wflo_append`` (one ``call.completed`` event), averaged over 150 appends after 50
(those that wrote a full-page image left out).
*Reads*: ``--events`` events (1,000,000 by default) in run journals of ~30 to 2,000 events
(nine in ten ``call.*``; budget alerts and approvals ~0.2% each) spread over 30 days, with
their runs and a system chain, are inserted into one store; a copy gets m021's (type, at)
index back (every event in it). Each read runs on both copies in turn (``--rounds`` times;
on the old copy as the queries were before: without ``TYPE_INDEXED``, and the feed's head
moves grouped by the bare column); median ms per side.

    python bench/event_indexes.py [--events 1000000] [--steps 100] [--rounds 7] [--stores sqlite,postgres] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import DB_PREFIX, PG, fresh_pg

from wflo.store import TYPE_INDEXED, open_store
from wflo.store._records import RUN_COLUMNS

OLD_INDEX = "CREATE INDEX events_type_at ON events (type, at)"
DATA = '{"call":"1","kind":"llm","name":"gpt-4o-mini","cost_usd":"0.0004836","usage":{"input_tokens":120}}'
APPROVALS = "('approval.requested', 'approval.decided', 'approval.expired', 'approval.cancelled')"
ALERTS = "SELECT e.at, e.chain, e.data, r.workflow FROM events e JOIN runs r ON r.id = e.chain WHERE e.type = 'budget.threshold'"
CHARGES = (
    "SELECT e.at, e.data, r.workflow FROM events e JOIN runs r ON r.id = e.chain "
    "WHERE e.type IN ('call.completed', 'call.failed', 'budget.unknown_outcome')"
)
DAY = ("2026-11-15T00:00:00.000000Z", "2026-11-16T00:00:00.000000Z")
LAST_SECONDS = "2026-11-29T23:59:58.000000Z"
HOUR = "2026-11-29T23:00:00.000000Z"
# name: (SQL up to its ORDER BY, the rest, parameters, whether it names the index's condition
# after m022: the reads by a type the index holds)
READS: dict[str, tuple[str, str, tuple[Any, ...], bool]] = {
    "budget alerts, newest 100": (ALERTS, " ORDER BY e.at DESC LIMIT 100", (), True),
    "budget alerts of a day": (ALERTS + " AND e.at >= ?", " ORDER BY e.at DESC LIMIT 100", DAY[:1], True),
    "the feed's approvals (2 s)": (f"SELECT e.chain, e.seq, e.data FROM events e WHERE e.at >= ? AND e.type IN {APPROVALS}", "", (LAST_SECONDS,), True),
    "the feed's head moves (2 s)": ("SELECT chain, MAX(seq) FROM events WHERE at >= ?", " GROUP BY chain", (LAST_SECONDS,), False),
    "metrics: every call": (CHARGES.replace("'budget.unknown_outcome'", "'loop.stopped'"), "", (), False),
    "spend from the journal, a day": (CHARGES + " AND e.at >= ? AND e.at < ?", "", DAY, False),
    "compliance window, a day": ("SELECT chain, seq, type, at, data FROM events WHERE at >= ? AND at < ?", " ORDER BY at, chain, seq", DAY, False),
    "chains since an hour": ("SELECT DISTINCT chain FROM events WHERE at >= ?", "", (HOUR,), False),
    "oldest event": ("SELECT MIN(at) FROM events", "", (), False),
    "system checkpoints": ("SELECT seq, at FROM events WHERE chain = 'system' AND type = 'audit.checkpointed'", " ORDER BY seq DESC", (), False),
}  # fmt: skip
FEED_HEADS = "SELECT chain || '', MAX(seq) FROM events WHERE at >= ? GROUP BY chain || ''"
"""The feed's head moves as the server now reads them (on the m022 side): ``events_at`` on SQLite."""


def history(events: int, seed: int = 7) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """``("e", event row)`` and ``("r", run row)`` of a history of about ``events`` events."""
    rng, start_of = random.Random(seed), datetime(2026, 10, 31, tzinfo=UTC)

    def iso(seconds: float) -> str:
        return (start_of + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    n = r = 0
    while n < events:
        chain, start = f"{r:08d}-0000-7000-8000-000000000000", rng.uniform(0, 30 * 86400 - 3600)
        types = ["run.created", "run.started"]
        for _ in range(max(4, min(2000, int(rng.lognormvariate(3.4, 1.0)))) - 3):
            x = rng.random()
            types.append(
                "budget.threshold" if x < 0.002 else "approval.requested" if x < 0.004 else "approval.decided"
                if x < 0.006 else "loop.stopped" if x < 0.007 else "call.started" if x < 0.05 else "call.failed"
                if x < 0.07 else "call.completed"
            )  # fmt: skip
        types.append("run.completed")
        for seq, type_ in enumerate(types, 1):
            yield "e", (chain, seq, type_, iso(start + seq * 0.5), DATA, "p", "h")
        end = iso(start + len(types) * 0.5)
        yield "r", (chain, "bench", "succeeded", "{}", "null", None, None, None, "{}", None, None, 0, None,
                    len(types), "h", 1, end, end, end)  # fmt: skip
        n, r = n + len(types), r + 1
    for i in range(720):
        yield (
            "e",
            ("system", i + 1, "audit.checkpointed" if i % 3 == 0 else "budget.set", iso(i * 3600), "{}", "p", "h"),
        )


def sqlite_stores(events: int, tmp: str) -> tuple[str, str]:
    new = f"{tmp}/new.db"
    open_store(f"sqlite:///{new}").close()
    conn = sqlite3.connect(new, isolation_level=None)
    conn.execute("BEGIN")
    rows: dict[str, list[tuple[Any, ...]]] = {"e": [], "r": []}
    for kind, row in history(events):
        rows[kind].append(row)
        if len(rows["e"]) >= 50_000:
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows["e"])
            rows["e"] = []
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows["e"])
    conn.executemany(f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * 19)})", rows["r"])
    conn.execute("COMMIT")
    conn.close()
    old = f"{tmp}/old.db"
    shutil.copy(new, old)
    with sqlite3.connect(old) as conn:
        conn.execute("DROP INDEX events_type_at")
        conn.execute(OLD_INDEX)
    return new, old


def pg_stores(events: int) -> tuple[str, str]:
    import psycopg

    new = fresh_pg("events_new")
    open_store(new).close()
    with psycopg.connect(new) as conn, conn.cursor() as cur:
        runs = []
        with cur.copy("COPY events (chain, seq, type, at, data, prev_hash, hash) FROM STDIN") as copy:
            for kind, row in history(events):
                if kind == "e":
                    copy.write_row(row)
                else:
                    runs.append(row)
        with cur.copy(f"COPY runs ({RUN_COLUMNS}) FROM STDIN") as copy:
            for row in runs:
                copy.write_row(row)
    old_name, new_name = DB_PREFIX + "events_old", new.rsplit("/", 1)[1]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {old_name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {old_name} TEMPLATE {new_name}")
    old = new.rsplit("/", 1)[0] + "/" + old_name
    with psycopg.connect(old, autocommit=True) as conn:
        conn.execute("DROP INDEX events_type_at")
        conn.execute(OLD_INDEX)
    for url in (new, old):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE events")
            conn.execute("VACUUM ANALYZE runs")
    return new, old


def reads(connect: Any, new: str, old: str, rounds: int, pg: bool) -> dict[str, dict[str, float]]:
    """Median ms of each read on both copies, in turn (the order flipping every round); on the
    old copy as the queries were before."""
    conns = {"m022": connect(new), "m021": connect(old)}
    times: dict[str, dict[str, list[float]]] = {name: {"m022": [], "m021": []} for name in READS}
    for r in range(rounds):
        for name, (head, tail, params, names_it) in READS.items():
            for side in ("m022", "m021") if r % 2 else ("m021", "m022"):
                sql = head + (f" AND e.{TYPE_INDEXED}" if names_it and side == "m022" else "") + tail
                sql = FEED_HEADS if side == "m022" and name.startswith("the feed's head") else sql
                t0 = time.perf_counter()
                conns[side].execute(sql.replace("?", "%s") if pg else sql, params).fetchall()
                times[name][side].append((time.perf_counter() - t0) * 1000)
    return {name: {side: statistics.median(v) for side, v in sides.items()} for name, sides in times.items()}


def sqlite_wal_frames(tmp: str, steps: int) -> dict[str, float]:
    """WAL frames per step committed, with m022's index, then with m021's back on the same store."""
    import wflo

    path = f"{tmp}/steps.db"
    wflo.configure(database=f"sqlite:///{path}?synchronous=FULL")

    @wflo.step
    def tiny(i: int) -> int:
        return i + 1

    @wflo.workflow(name="bench.eventidx", guards=False)
    def work(n: int) -> int:
        return sum(tiny(i) for i in range(n))

    conn = sqlite3.connect(path, isolation_level=None)
    found = {}
    for side in ("m022", "m021"):
        if side == "m021":
            conn.execute("DROP INDEX events_type_at")
            conn.execute(OLD_INDEX)
        for _ in range(20):  # some history, so the indexes have depth
            work.run(steps)
        frames: dict[int, list[int]] = {0: [], steps: []}
        for n in (0, steps) * 3:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            work.run(n)
            frames[n].append((os.path.getsize(path + "-wal") - 32) // (4096 + 24))
        found[side] = (statistics.mean(frames[steps]) - statistics.mean(frames[0])) / steps
    return found


def pg_wal_per_append(url: str) -> dict[str, float]:
    import psycopg

    run = "bench-" + uuid.uuid4().hex
    found: dict[str, list[int]] = {"records": [], "bytes": []}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO runs (id, workflow, status, input, options, lease_owner, last_seq, last_hash, created_at, "
            "updated_at) VALUES (%s, 'w', 'running', '{}', '{}', 'me', 0, 'g', '2026-11-30', '2026-11-30')",
            (run,),
        )
        for seq in range(1, 201):
            at = f"2026-11-30T06:00:00.{seq:06d}Z"
            plan = "\n".join(r[0] for r in conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) SELECT wflo_append(%s, %s, 'me', %s, %s, %s, NULL, false, "
                "NULL, NULL, false, NULL, NULL, ARRAY[%s]::bigint[], ARRAY['call.completed'], ARRAY[%s], "
                "ARRAY['{\"call\":\"x\",\"output\":1}'], ARRAY[%s], ARRAY[%s])",
                (run, seq - 1, seq, f"h{seq}", at, seq, at, f"h{seq - 1}", f"h{seq}"),
            ))  # fmt: skip
            wal = re.search(r"WAL: records=(\d+)(?: fpi=(\d+))? bytes=(\d+)", plan)
            if seq > 50 and wal and not wal[2]:  # full-page images (after a checkpoint) left out
                found["records"].append(int(wal[1]))
                found["bytes"].append(int(wal[3]))
    return {k: statistics.mean(v) for k, v in found.items()}


SINCES = {
    "the last hour": HOUR,
    "the last day": "2026-11-29T00:00:00.000000Z",
    "the last 10 days": "2026-11-20T00:00:00.000000Z",
    "all 30 days": "2026-10-01T00:00:00.000000Z",
}


def since_chains(url: str, rounds: int) -> dict[str, dict[str, float]]:
    """``audit verify --since``'s chain lookup, median ms: before (one ``SELECT DISTINCT chain``,
    which SQLite's planner runs as a walk of the whole key index) and now (``chains_since``:
    a bounded count on the time index, then the window by time when it is small), alternating
    every round, for three windows."""
    from wflo.audit._tables import chains_since

    out: dict[str, dict[str, float]] = {}
    with open_store(url) as store:
        for name, since in SINCES.items():
            sides: dict[str, Any] = {
                "before": lambda s=since: {
                    r[0] for r in store.read("SELECT DISTINCT chain FROM events WHERE at >= ?", (s,))
                },
                "now": lambda s=since: chains_since(store, s) - {"system"},
            }
            times: dict[str, list[float]] = {k: [] for k in sides}
            answers: dict[str, set[str]] = {}
            for r in range(rounds):
                for key in sorted(sides, reverse=bool(r % 2)):
                    t0 = time.perf_counter()
                    answers[key] = sides[key]()
                    times[key].append((time.perf_counter() - t0) * 1000)
            assert answers["before"] - {"system"} == answers["now"], name
            out[name] = {k: statistics.median(v) for k, v in times.items()} | {"chains": len(answers["now"])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {"load": os.getloadavg()}
    if "sqlite" in args.stores:
        with tempfile.TemporaryDirectory(prefix="wflo-eventidx-") as tmp:
            new, old = sqlite_stores(args.events, tmp)
            out["sqlite"] = {
                "reads_ms": reads(sqlite3.connect, new, old, args.rounds, pg=False),
                "wal_frames_per_step": sqlite_wal_frames(tmp, args.steps),
                "since_ms": since_chains(f"sqlite:///{new}", args.rounds),
            }
    if "postgres" in args.stores:
        import psycopg

        new, old = pg_stores(args.events)
        out["postgres"] = {
            "reads_ms": reads(lambda u: psycopg.connect(u, autocommit=True), new, old, args.rounds, pg=True),
            "wal_per_append": {"m022": pg_wal_per_append(new), "m021": pg_wal_per_append(old)},
            "since_ms": since_chains(new, args.rounds),
        }
        with psycopg.connect(PG, autocommit=True) as conn:
            for url in (new, old):
                conn.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    out["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(out, indent=1))
        return
    for store in ("sqlite", "postgres"):
        if store in out:
            print(f"\n{store}: median ms at {args.events:,} events, m021 (every event in the type index) / m022")
            for name, sides in out[store]["reads_ms"].items():
                print(f"  {name:32s} {sides['m021']:9.2f} {sides['m022']:9.2f}  x{sides['m022'] / sides['m021']:.2f}")
            print(f"{store}: audit verify --since's chains, median ms, before / now")
            for name, sides in out[store]["since_ms"].items():
                print(f"  {name:32s} {sides['before']:9.2f} {sides['now']:9.2f}  ({sides['chains']:,} chains)")
    if "sqlite" in out:
        print(f"\nsqlite WAL frames per step, m021 / m022: {out['sqlite']['wal_frames_per_step']}")
    if "postgres" in out:
        print(f"postgres WAL per append, m021 / m022: {out['postgres']['wal_per_append']}")
    print(f"load average before {out['load']}, after {out['load_after']}")


if __name__ == "__main__":
    main()
