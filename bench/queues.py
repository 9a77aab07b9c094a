"""Queues: claiming beside many finished runs, enqueue rate, wake latency, and draining.

``claim``: the cost of ``claim_next`` on a store holding 1,000 finished runs against one
holding ``--big`` (default 100,000; bulk-inserted), alternating the two stores claim by claim,
``--rounds`` rounds of 200 claims; median and spread of the per-round medians.

``enqueue``: ``.start()`` of an empty workflow, runs per second, alternating wflo and DBOS
Transact's ``Queue.enqueue`` (when ``dbos`` is installed) in blocks of 50, ``--rounds`` rounds.

``wake``: a worker process idles; this process makes a waiting run claimable (as an approval
decision does) and measures, on the store's clock, commit → ``run.resumed``; and
``handle.result()`` returning after the run's final commit.

``wakeclaim``: the claim alone, in this process: ``claim_next`` of a woken run (as an idle
worker's) and ``claim(run_id)``, ``--samples`` each, alternating; median and p99. To compare two
versions of the code, run it with each one's ``src`` on ``PYTHONPATH``, alternating.

``drain``: PostgreSQL only. ``--drain`` runs (default 2,000) of a one-step workflow are
enqueued on a named queue, then 1, 2, 4 and 8 worker processes drain them; runs/s and
enqueue → start p50/p99 (``started_at - created_at``, both the server's clock).

    python bench/queues.py [claim|enqueue|wake|wakeclaim|drain ...] [--stores sqlite,postgres] [--rounds 5]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import fresh_pg, pct

HERE = Path(__file__).parent
SRC = str(HERE.parent / "src")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f} (min {min(values):.3f}, max {max(values):.3f})"


def _url(kind: str, tmp: str, name: str) -> str:
    return f"sqlite:///{tmp}/{name}.db" if kind == "sqlite" else fresh_pg(name)


# --------------------------------------------------------------------------- claim
def _fill_finished(store: Any, count: int) -> None:
    """``count`` finished runs, inserted in bulk (executemany, 10,000 a transaction)."""
    from wflo.store import RUN_STATUSES, now_iso

    finals = [s for s in RUN_STATUSES if s in ("succeeded", "failed", "cancelled")]
    now = now_iso()
    sql = store._sql(
        "INSERT INTO runs (id, workflow, status, input, output, error, parent_id, tenant, options, lease_owner, "
        "lease_expires_at, cancel_requested, wake_at, last_seq, last_hash, attempts, created_at, updated_at, "
        "finished_at, queue, priority, partition_key, started_at) "
        "VALUES (?, ?, ?, '{}', 'null', NULL, NULL, NULL, '{}', NULL, NULL, 0, NULL, 3, 'h', 1, ?, ?, ?, ?, 0, NULL, ?)"
    )
    done = 0
    while done < count:
        n = min(10_000, count - done)
        rows = [
            (f"done-{done + i:08d}", "bench.claim", finals[i % 3], now, now, now, "q" if i % 2 else None, now)
            for i in range(n)
        ]
        store.write(lambda cur, rows=rows: cur.executemany(sql, rows))
        done += n


def _queue_some(store: Any, count: int, tag: str) -> None:
    for i in range(count):
        store.create_run(run_id=f"{tag}-{i:06d}", workflow="bench.claim", input={})


def bench_claim(kind: str, tmp: str, big: int, rounds: int) -> None:
    from wflo.store import open_store

    stores = {}
    for size in (1_000, big):
        url = _url(kind, tmp, f"wflo_claim_{size}")
        store = open_store(url)
        _fill_finished(store, size)
        stores[size] = store
    per_round: dict[int, list[float]] = {1_000: [], big: []}
    batch = 200
    for r in range(rounds):
        for store in stores.values():
            _queue_some(store, batch, f"r{r}")
        samples: dict[int, list[float]] = {1_000: [], big: []}
        for _ in range(batch):
            for size, store in stores.items():  # alternate the two stores claim by claim
                t0 = time.perf_counter()
                got = store.claim_next("bench", 60, ["bench.claim"])
                samples[size].append((time.perf_counter() - t0) * 1000)
                assert got is not None
        for size in stores:
            per_round[size].append(statistics.median(samples[size]))
    a, b = statistics.median(per_round[1_000]), statistics.median(per_round[big])
    print(f"claim_next on {kind}, ms (median of {rounds} rounds x {batch} claims):")
    print(f"  {1_000:>9,} finished runs: {_spread(per_round[1_000])}")
    print(f"  {big:>9,} finished runs: {_spread(per_round[big])}   ratio {b / a:.2f}x")
    for store in stores.values():
        store.close()


# --------------------------------------------------------------------------- enqueue
def bench_enqueue(kind: str, tmp: str, rounds: int, block: int = 50, full: bool = True) -> None:
    import wflo
    from wflo import _config

    wflo_url = _url(kind, tmp, "wflo_enqueue")
    if kind == "sqlite" and full:
        wflo_url += "?synchronous=FULL"  # an fsync per commit, as DBOS's SQLite store does
    dbos_url = _url(kind, tmp, "dbos_enqueue")
    _config.reset()
    wflo.configure(database=wflo_url)
    wflo.Queue("bench-enqueue")

    @wflo.workflow(name="bench.enqueue", queue="bench-enqueue", guards=False)
    def flow(i: int) -> int:
        return i

    flow.start(-1)  # open the store, migrate
    client = _dbos_client(dbos_url)
    rates: dict[str, list[float]] = {"wflo": [], "DBOS": []}
    for r in range(rounds):
        sides: list[tuple[str, Callable[[int], Any]]] = [("wflo", flow.start)]
        if client is not None and not isinstance(client, str):
            sides.append(
                ("DBOS", lambda i: client.enqueue({"workflow_name": "flow", "queue_name": "bench-enqueue"}, i))
            )
        samples: dict[str, list[float]] = {name: [] for name, _ in sides}
        for b in range(8):  # alternate the two sides block by block
            for name, fn in sides if b % 2 == 0 else sides[::-1]:
                t0 = time.perf_counter()
                for i in range(block):
                    fn(r * 1000 + b * block + i)
                samples[name].append(block / (time.perf_counter() - t0))
        for name, values in samples.items():
            rates[name].append(statistics.median(values))
    sync = " (wflo synchronous=FULL)" if kind == "sqlite" and full else ""
    print(f"enqueue on {kind}{sync}, runs/s (median of {rounds} rounds, blocks of {block}, alternating):")
    print(f"  wflo .start():          {_spread(rates['wflo'])}")
    if rates["DBOS"]:
        print(f"  DBOS client.enqueue():  {_spread(rates['DBOS'])}")
        ratio = statistics.median(rates["wflo"]) / statistics.median(rates["DBOS"])
        print(f"  wflo / DBOS: {ratio:.2f}x")
    else:
        print(f"  DBOS: {client or 'not installed (pip install dbos)'}")
    _config.reset()


def _dbos_client(url: str) -> Any:
    """A DBOS client on a migrated DBOS system database, or why not."""
    try:
        import logging

        from dbos import DBOS, DBOSClient
    except ImportError:
        return "dbos not installed (pip install dbos)"
    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(config={"name": "wflobench", "system_database_url": url, "run_admin_server": False})  # type: ignore[typeddict-unknown-key]
    DBOS.launch()  # creates the system tables
    DBOS.destroy(destroy_registry=True)
    return DBOSClient(system_database_url=url)


# --------------------------------------------------------------------------- wake
WAKE_APP = """
import wflo

@wflo.workflow(name="bench.wake", guards=False)
def echo(i: int) -> int:
    return i
"""


def _worker_procs(url: str, app: Path, count: int, concurrency: int, poll: str) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "WFLO_DATABASE_URL": url, "WFLO_POLL_INTERVAL": poll, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "wflo.cli", "worker", "--import", str(app), "-c", str(concurrency)]
    procs = [
        subprocess.Popen(cmd, env=env, cwd=str(app.parent), stdout=subprocess.PIPE, text=True) for _ in range(count)
    ]
    for proc in procs:
        assert proc.stdout is not None
        proc.stdout.readline()  # "wflo worker …": it is serving
        # Keep reading its progress lines: a full pipe would stop the worker mid-print.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)


def bench_wake(kind: str, tmp: str, samples: int) -> None:
    from wflo.engine import RunHandle
    from wflo.store import Head, NewEvent, now_iso, open_store, parse_iso

    url = _url(kind, tmp, "wflo_wake")
    app = Path(tmp) / f"wakeapp_{kind}.py"
    app.write_text(WAKE_APP)
    store = open_store(url)
    ids = [f"wake-{i}" for i in range(samples + 1)]
    for run_id in ids:
        rec, _ = store.create_run(
            run_id=run_id, workflow="bench.wake", input={"args": [1], "kwargs": {}}, owner="b:1:x"
        )
        store.append(run_id, Head(rec.last_seq, rec.last_hash), [NewEvent("run.waiting", {"reason": "bench"})],
                     owner="b:1:x", status="waiting", release=True, wake_at="2999-01-01T00:00:00.000000Z")  # fmt: skip
    procs = _worker_procs(url, app, 1, 2, "1.0")  # polls once a second: only a notification wakes it fast
    resumed, results = [], []
    try:
        for n, run_id in enumerate(ids):
            time.sleep(0.05)
            store.set_wake(run_id, now_iso())  # what an approval decision does
            t0 = time.time()  # committed
            RunHandle(run_id, store).result(timeout=30)
            if n == 0:
                continue  # the worker's first run pays for imports
            results.append((time.time() - t0) * 1000)
            ev = next(e for e in store.events(run_id) if e.type == "run.resumed")
            resumed.append((parse_iso(ev.at).timestamp() - t0) * 1000)
    finally:
        _stop(procs)
    commit = []
    for _ in range(samples):
        t1 = time.perf_counter()
        store.write(lambda cur: store.execute(cur, "UPDATE wflo_meta SET value = value WHERE key = 'schema_version'"))
        commit.append((time.perf_counter() - t1) * 1000)
    store.close()
    print(f"wake on {kind}, ms over {samples} runs (worker poll_interval 1 s):")
    print(
        f"  for scale, one durable commit (UPDATE):         p50 {pct(commit, 0.5):6.1f}  p99 {pct(commit, 0.99):6.1f}"
    )
    print(
        f"  decision committed -> run resumed on the worker: p50 {pct(resumed, 0.5):6.1f}  p99 {pct(resumed, 0.99):6.1f}"
    )
    print(
        f"  decision committed -> handle.result() returned:  p50 {pct(results, 0.5):6.1f}  p99 {pct(results, 0.99):6.1f}"
    )


def bench_wakeclaim(kind: str, tmp: str, samples: int) -> None:
    from wflo.store import Head, NewEvent, open_store

    store = open_store(_url(kind, tmp, "wflo_wakeclaim"))
    for i in range(2 * samples + 2):
        run, _ = store.create_run(run_id=f"r{i}", workflow="w", input={}, owner="x", lease_seconds=30)
        store.append(f"r{i}", Head(run.last_seq, run.last_hash), [NewEvent("run.waiting", {})], owner="x",
                     status="waiting", release=True, wake_at="2000-01-01T00:00:00.000000Z")  # fmt: skip
    store.claim_next("warm", 30, ["w"])
    store.claim("r1", "warm", 30)
    woken: list[float] = []
    direct: list[float] = []
    for i in range(samples):  # alternating the two, claim by claim
        t = time.perf_counter()
        assert store.claim_next(f"o{i}", 30, ["w"]) is not None
        woken.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        store.claim(f"r{2 * samples + 1 - i}", f"d{i}", 30)
        direct.append((time.perf_counter() - t) * 1000)
    store.close()
    print(f"claim on {kind}, ms over {samples} claims each:")
    print(f"  claim_next of a woken run: p50 {pct(woken, 0.5):6.2f}  p99 {pct(woken, 0.99):6.2f}")
    print(f"  claim(run_id):             p50 {pct(direct, 0.5):6.2f}  p99 {pct(direct, 0.99):6.2f}")


# --------------------------------------------------------------------------- drain
DRAIN_APP = """
import wflo

wflo.Queue("drain")

@wflo.step
def work(i: int) -> int:
    return i + 1

@wflo.workflow(name="bench.drain", queue="drain", guards=False)
def flow(i: int) -> int:
    return work(i)
"""


def bench_drain(tmp: str, total: int, counts: list[int], rounds: int) -> None:
    import wflo
    from wflo import _config
    from wflo.store import open_store, parse_iso

    app = Path(tmp) / "drainapp.py"
    app.write_text(DRAIN_APP)
    sys.path.insert(0, tmp)
    import drainapp  # type: ignore[import-not-found]

    results: dict[int, dict[str, list[float]]] = {c: {"rate": [], "p50": [], "p99": []} for c in counts}
    for r in range(rounds):
        for count in counts if r % 2 == 0 else counts[::-1]:
            url = fresh_pg("wflo_drain")
            _config.reset()
            wflo.configure(database=url)
            for i in range(total):
                drainapp.flow.start(i)
            procs = _worker_procs(url, app, count, 4, "0.2")
            store = open_store(url)
            try:
                while store.count_runs_by_status().get("succeeded", 0) < total:
                    time.sleep(0.1)
                rows = store.read("SELECT started_at, finished_at FROM runs WHERE status = 'succeeded'")
                first = min(parse_iso(a) for a, _ in rows)
                last = max(parse_iso(b) for _, b in rows)
                results[count]["rate"].append(total / (last - first).total_seconds())
                # Latency: idle workers, runs enqueued one by one at a steady pace.
                ids = []
                for i in range(100):
                    ids.append(drainapp.flow.start(i).id)
                    time.sleep(0.01)
                while store.count_runs_by_status().get("succeeded", 0) < total + 100:
                    time.sleep(0.1)
                marks = ", ".join("?" * len(ids))
                lat = [
                    (parse_iso(s) - parse_iso(c)).total_seconds() * 1000
                    for c, s in store.read(f"SELECT created_at, started_at FROM runs WHERE id IN ({marks})", ids)
                ]
                results[count]["p50"].append(pct(lat, 0.5))
                results[count]["p99"].append(pct(lat, 0.99))
            finally:
                _stop(procs)
                store.close()
            _config.reset()
    print(f"drain on postgres: {total} one-step runs on a named queue, workers of 4 threads (median of {rounds}):")
    print(f"  {'workers':>7} {'runs/s':>8} {'enqueue->start p50 ms':>22} {'p99 ms':>8}")
    for count in counts:
        res = results[count]
        print(
            f"  {count:>7} {statistics.median(res['rate']):8.1f} {statistics.median(res['p50']):22.1f} "
            f"{statistics.median(res['p99']):8.1f}"
        )


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=["claim", "enqueue", "wake", "drain"])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--drain", type=int, default=2_000)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--samples", type=int, default=30, help="wake-ups measured by `wake`")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="wflo-bench-queues-")
    kinds = args.stores.split(",")
    parts: dict[str, Callable[[], None]] = {
        "claim": lambda: [bench_claim(k, tmp, args.big, args.rounds) for k in kinds] and None,
        "enqueue": lambda: [bench_enqueue(k, tmp, args.rounds) for k in kinds] and None,
        "wake": lambda: [bench_wake(k, tmp, args.samples) for k in kinds] and None,
        "wakeclaim": lambda: [bench_wakeclaim(k, tmp, args.samples) for k in kinds] and None,
        "drain": lambda: bench_drain(tmp, args.drain, [int(c) for c in args.workers.split(",")], args.rounds),
    }
    for part in args.parts:
        parts[part]()


if __name__ == "__main__":
    main()
