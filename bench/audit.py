"""The flight recorder's costs: appending to a hash chain, and verifying a large history.

Method. *Append*: ``--appends`` events appended to one chain through ``Store.append_chain``
(each in its own transaction, then in batches of 100), after a warm-up, on each store; the
cost per event is the median (and p99) of the per-call time divided by the events per call.
The pure hashing cost (canonical JSON + SHA-256 of one event) is shown beside it. *Verify*:
``--events`` events on SQLite and ``--pg-events`` on PostgreSQL (1,000,000 by default, in run
journals of realistic lengths: log-normal, median ~30 events, 3 to 2,000, so ~20,000 runs;
~250-byte payloads and real link hashes) are inserted with ``executemany``, with their runs.
Then three sides alternate, the order rotating every round, over ``--rounds`` rounds: wflo's
``verify_all`` (split over two processes on two or more cores), the same with ``workers=1``,
and the floor: the same rows read in key order with the bare driver (sqlite3; psycopg with a
server-side cursor) and one SHA-256 of each row's stored text, nothing checked. Throughput =
events / wall time; median and the slowest..fastest round. The signed checkpoint of the same
store (every chain's head, Merkle root, Ed25519) is timed too.

    python bench/audit.py [--events 1000000] [--pg-events 1000000] [--appends 2000] [--rounds 5] [--keep DIR] [--pg-prefix NAME] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import hashlib
import json
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from _common import PG, fresh_pg, pct

from wflo.audit import make_checkpoint, verify_all, verify_book
from wflo.cost import usd_str
from wflo.cost._tables import SPEND_COLUMNS
from wflo.store import GENESIS, SYSTEM_CHAIN, NewEvent, Store, canonical_json, link_hash, now_iso, open_store
from wflo.store._records import RUN_COLUMNS


def _payload(i: int) -> dict[str, Any]:
    return {"call": str(i), "kind": "llm", "name": "gpt-4o-mini", "cost_usd": "0.0004836", "ms": 3.4,
            "args_digest": f"{i:064x}", "usage": {"input_tokens": 120, "output_tokens": 80}}  # fmt: skip


def bench_append(store: Store, n: int) -> dict[str, float]:
    one: list[float] = []
    for i in range(n // 10):  # warm-up
        store.append_chain("_bench_warm", [NewEvent("bench.event", _payload(i))])
    for i in range(n):
        ev = [NewEvent("bench.event", _payload(i))]
        t0 = time.perf_counter_ns()
        store.append_chain("_bench_one", ev)
        one.append((time.perf_counter_ns() - t0) / 1000)
    batched: list[float] = []
    for b in range(max(1, n // 100)):
        evs = [NewEvent("bench.event", _payload(b * 100 + i)) for i in range(100)]
        t0 = time.perf_counter_ns()
        store.append_chain("_bench_batch", evs)
        batched.append((time.perf_counter_ns() - t0) / 1000 / 100)
    at = now_iso()
    t0 = time.perf_counter_ns()
    prev = GENESIS
    for i in range(n):
        prev = link_hash(prev, "_bench_hash", i + 1, "bench.event", at, canonical_json(_payload(i)))
    hash_us = (time.perf_counter_ns() - t0) / 1000 / n
    return {
        "append_one_median_us": statistics.median(one),
        "append_one_p99_us": pct(one, 0.99),
        "append_batch100_median_us": statistics.median(batched),
        "hash_only_us": hash_us,
    }


def chain_lengths(events: int, seed: int = 20) -> list[int]:
    """Run journals of realistic lengths summing to ``events``: most runs are short (a few
    LLM and tool calls), a few are long agent loops (log-normal, median ~30, 3 to 2,000)."""
    rng = random.Random(seed)
    lengths: list[int] = []
    left = events
    while left > 0:
        n = min(left, max(3, min(2000, int(rng.lognormvariate(3.4, 1.0)))))
        lengths.append(n)
        left -= n
    return lengths


def fill(store: Store, events: int) -> tuple[float, int]:
    """Insert ``events`` real hash-chained events in run journals of realistic lengths, with
    their runs; return the seconds it took and the number of chains."""
    t0 = time.perf_counter()
    at = now_iso()
    data_json = canonical_json(_payload(0))
    sql = store._sql("INSERT INTO events (chain, seq, type, at, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)")
    run_sql = store._sql(
        f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, 'bench', 'succeeded', '{{}}', 'null', NULL, NULL, NULL, "
        "'{}', NULL, NULL, 0, NULL, ?, ?, 1, ?, ?, ?)"
    )
    book_sql = store._sql(f"INSERT INTO ledger_spend ({SPEND_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    lengths = chain_lengths(events)
    with store._connection() as conn:
        cur = conn.cursor()
        store._begin(cur)
        for c, length in enumerate(lengths):
            chain = f"{c:08d}-0000-7000-8000-000000000000"
            prev, rows = GENESIS, []
            for seq in range(1, length + 1):
                type_ = "run.created" if seq == 1 else "run.completed" if seq == length else "call.completed"
                digest = link_hash(prev, chain, seq, type_, at, data_json)
                rows.append((chain, seq, type_, at, data_json, prev, digest))
                prev = digest
            cur.executemany(sql, rows)
            cur.execute(run_sql, (chain, length, prev, at, at, at))
            cur.execute(book_sql, _book_row(chain, length, at))
            if c % 1000 == 999:
                cur.execute("COMMIT")
                store._begin(cur)
        cur.execute("COMMIT")
        cur.close()
    return time.perf_counter() - t0, len(lengths)


def _book_row(chain: str, length: int, at: str) -> tuple[Any, ...]:
    """The spend book's row of a filled run: its ``length - 2`` calls (``_payload``), this hour."""
    n = length - 2
    return (at[:13] + ":00", chain, "gpt-4o-mini", "bench", None, n, usd_str(Decimal("0.0004836") * n), "0", 120 * n,
            80 * n)  # fmt: skip


def fill_book(store: Store) -> None:
    """The spend book of a history kept by a release that did not fill it (``--keep``)."""
    rows = store.read("SELECT id, last_seq, created_at FROM runs WHERE workflow = 'bench'")
    sql = f"INSERT INTO ledger_spend ({SPEND_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    store.write(lambda cur: cur.executemany(store._sql(sql), [_book_row(r[0], int(r[1]), r[2]) for r in rows]))


def kept_pg(name: str) -> str:
    """The URL of PostgreSQL database ``name``, created if missing (kept between runs)."""
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f"CREATE DATABASE {name}")
    return PG.rsplit("/", 1)[0] + "/" + name


def floor(url: str) -> int:
    """The floor: the same rows read with the bare driver (sqlite3, or psycopg with a server-side
    cursor) in key order and one SHA-256 of each row's stored text, nothing checked."""
    sql = "SELECT chain, seq, type, at, data, prev_hash, hash FROM events ORDER BY chain, seq"
    sha256, n = hashlib.sha256, 0
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split(":///", 1)[1])
        try:
            for _chain, _seq, _type, _at, data, prev_hash, _hash in conn.execute(sql):
                sha256((prev_hash + data).encode()).hexdigest()
                n += 1
        finally:
            conn.close()
        return n
    import psycopg

    with psycopg.connect(url) as pg, pg.cursor(name="floor") as cur:
        cur.itersize = 20000
        cur.execute(sql)
        for _chain, _seq, _type, _at, data, prev_hash, _hash in cur:
            sha256((prev_hash + data).encode()).hexdigest()
            n += 1
    return n


def bench_verify(store: Store, url: str, events: int, rounds: int) -> dict[str, Any]:
    have = store.read_one("SELECT COUNT(*), COUNT(DISTINCT chain) FROM events WHERE chain <> ?", (SYSTEM_CHAIN,))
    if have and int(have[0]) == events:  # --keep: the history filled by an earlier run (and its checkpoints)
        fill_s, chains = 0.0, int(have[1])
        if not store.read_one("SELECT COUNT(*) FROM ledger_spend")[0]:  # type: ignore[index]
            fill_book(store)
    else:
        fill_s, chains = fill(store, events)
    # wflo's verify_all (split over two processes on a 2-core machine), the same in one process,
    # and the floor, alternating, the order rotating every round.
    times: dict[str, list[float]] = {"wflo": [], "one": [], "floor": [], "book": []}
    counts: dict[str, int] = {}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    sides: list[tuple[str, Callable[[], int]]] = [
        ("wflo", lambda: _checked(verify_all(store))),
        ("one", lambda: _checked(verify_all(store, workers=1))),
        ("floor", lambda: floor(url)),
        ("book", lambda: _book_checked(verify_book(store), total_events=events)),
    ]
    for r in range(rounds):
        for name, fn in sides[r % 4 :] + sides[: r % 4]:
            t0, c0 = time.perf_counter(), _cpu()
            counts[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu() - c0)
    assert counts["wflo"] == counts["one"] == counts["floor"], counts
    total = counts["wflo"]
    from cryptography.hazmat.primitives.asymmetric import ed25519

    t0 = time.perf_counter()
    make_checkpoint(store, ed25519.Ed25519PrivateKey.generate(), by="bench", verify=False)
    checkpoint_s = time.perf_counter() - t0
    out: dict[str, Any] = {"events": total, "chains": chains, "fill_s": fill_s, "checkpoint_s": checkpoint_s}
    for name, ts in times.items():
        out[f"{name}_events_per_s"] = total / statistics.median(ts)
        out[f"{name}_spread_events_per_s"] = [total / max(ts), total / min(ts)]
        out[f"{name}_events_per_cpu_s"] = total / statistics.median(cpu[name])
    return out


def _cpu() -> float:
    """CPU seconds of this process and of its children that ended (the verify_all child)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _book_checked(report: Any, total_events: int) -> int:
    assert report.ok, [f.describe() for f in report.findings][:3]
    return total_events


def _checked(reports: list[Any]) -> int:
    assert all(x.ok for x in reports), [x.describe() for x in reports if not x.ok][:3]
    return sum(x.count for x in reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--pg-events", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5, help="verification rounds (each side)")
    parser.add_argument(
        "--keep", default="", help="keep the verified histories (SQLite: in this directory) and reuse them next time"
    )
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument(
        "--pg-prefix", default="wflo_bench_audit", help="name prefix of the PostgreSQL databases it drops and creates"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.stores.split(","):
            row: dict[str, Any] = {"store": name}
            try:
                if name == "sqlite":
                    keep = args.keep or tmp
                    append_url, verify_url, n = f"sqlite:///{tmp}/append.db", f"sqlite:///{keep}/verify.db", args.events
                else:
                    append_url, verify_url, n = (
                        fresh_pg(f"{args.pg_prefix}_a"),
                        kept_pg(f"{args.pg_prefix}_v") if args.keep else fresh_pg(f"{args.pg_prefix}_v"),
                        args.pg_events,
                    )
                with open_store(append_url) as store:
                    row.update(bench_append(store, args.appends))
                with open_store(verify_url) as store:
                    row.update(bench_verify(store, verify_url, n, args.rounds))
            except Exception as exc:  # a store that is not reachable is reported, not fatal
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"flight recorder costs (python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    print(f"{'store':9} {'append µs':>10} {'p99 µs':>8} {'batch100 µs':>12} {'hash µs':>8} {'events':>9} "
          f"{'chains':>7} {'checkpoint s':>13}")  # fmt: skip
    for r in rows:
        if "error" in r:
            print(f"{r['store']:9} {r['error']}")
            continue
        print(f"{r['store']:9} {r['append_one_median_us']:10.0f} {r['append_one_p99_us']:8.0f} "
              f"{r['append_batch100_median_us']:12.1f} {r['hash_only_us']:8.1f} {r['events']:9d} "
              f"{r['chains']:7d} {r['checkpoint_s']:13.2f}")  # fmt: skip
    print(f"\nverification, events/s: median (slowest..fastest round) over {args.rounds} rounds")
    print(f"{'store':9} {'wflo verify_all':>26} {'wflo, one process':>26} {'floor (read + sha256)':>26} "
          f"{'spend book pass':>26}")  # fmt: skip
    for r in rows:
        if "error" in r:
            continue
        cells = [f"{r[k + '_events_per_s']:,.0f} ({r[k + '_spread_events_per_s'][0]:,.0f}..{r[k + '_spread_events_per_s'][1]:,.0f})"
                 for k in ("wflo", "one", "floor", "book")]  # fmt: skip
        print(f"{r['store']:9} " + " ".join(f"{c:>26}" for c in cells))
    print("\nevents per CPU second of the client processes (the database server's CPU is not counted)")
    for r in rows:
        if "error" not in r:
            print(
                f"{r['store']:9} "
                + " ".join(f"{r[k + '_events_per_cpu_s']:>26,.0f}" for k in ("wflo", "one", "floor", "book"))
            )


if __name__ == "__main__":
    main()
