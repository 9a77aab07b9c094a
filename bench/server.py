"""The server's runs API at scale: list and detail latency, and live fan-out.

Method. A fresh store gets ``--runs`` runs (100,000 by default: 20 workflows, 10 tenants, the
eight statuses, spread over 30 days, each with a ``run.created`` and one priced LLM call) and
one run of ``--events`` events (10,000: LLM calls with their recorded answers, tool calls,
steps), all with real link hashes, and the spend book's rows for those calls (what the ledger
would have booked), inserted directly (``executemany`` on SQLite, ``COPY`` on PostgreSQL). Requests go through the ASGI app (FastAPI ``TestClient``, a bearer token, so
authentication and the route's permission check are included), ``--iters`` per request kind,
the kinds interleaved request by request; each kind's median and p95 are printed:

- list: first page (50 newest), a page filtered by status, by workflow, by tenant, by two
  statuses, by text, and page 100 reached by cursor;
- detail of the 10,000-event run (record, cost, children, approvals, and its whole chain
  verified) and one page of 200 of its events.

Then ``--streams`` (100) server-sent-event streams are opened on that run against a real
uvicorn server, one event is appended, and the time until every stream has it is measured
(``--fanout-rounds`` times). With ``--without-indexes`` the list is measured again after
dropping the ``m010_runs_list_indexes`` indexes, to show what they buy.

    python bench/server.py [--store sqlite|postgres|both] [--runs 100000] [--events 10000]
                           [--iters 40] [--streams 100] [--without-indexes]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import asyncio
import io
import json
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from _common import RunFiller, fresh_pg, pct

from wflo import _config
from wflo.store import Head, NewEvent, RunRecord, Store

STATUSES = (["succeeded"] * 70 + ["failed"] * 12 + ["running"] * 5 + ["queued"] * 4 + ["waiting"] * 3
            + ["cancelled"] * 3 + ["stopped"] * 2 + ["blocked"])  # fmt: skip
BIG = "big-run"


def _answer(i: int) -> dict[str, Any]:
    body = {"choices": [{"message": {"role": "assistant", "content": f"answer {i}: " + "otters " * 40},
                         "finish_reason": "stop"}], "usage": {"prompt_tokens": 120, "completion_tokens": 80}}  # fmt: skip
    return {"body": json.dumps(body), "status": 200}


def _llm(i: int, with_answer: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": "llm", "call": str(i), "name": "gpt-4o-mini", "provider": "openai", "cost_usd": "0.0004836",
        "reserved_usd": "0.0006", "ms": 812.5, "usage": {"input_tokens": 120, "output_tokens": 80},
        "args_digest": f"{i:064x}",
    }  # fmt: skip
    if with_answer:
        data["output"] = _answer(i)
    return data


def fill(store: Store, runs: int, events: int) -> None:
    rnd = random.Random(7)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    filler = RunFiller()
    for n in range(runs):
        rid = f"{n:08d}-{rnd.getrandbits(64):016x}"
        created = (start + timedelta(seconds=n * 26 + rnd.random())).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        status = rnd.choice(STATUSES)
        wf, tenant = f"wf-{rnd.randrange(20)}", f"t{rnd.randrange(10)}"
        evs = [NewEvent("run.created", {"workflow": wf, "input": {"args": [n], "kwargs": {}}, "tenant": tenant}, created),
               NewEvent("call.completed", _llm(1, False), created)]  # fmt: skip
        err = json.dumps({"type": "ValueError", "message": f"bad input {n}"}) if status == "failed" else None
        filler.add(rid, wf, status, tenant, evs, created=created, finished=created, input='{"args":[],"kwargs":{}}',
                   error=err)  # fmt: skip
        filler.book.append((created[:13] + ":00", rid, "gpt-4o-mini", wf, tenant, 1, "0.0004836", "0", 120, 80))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    big = [NewEvent("run.created", {"workflow": "wf-big", "input": {}, "tenant": "t0"}, now)]
    for i in range(1, events):
        kind = i % 3
        if kind == 0:
            big.append(NewEvent("call.completed", _llm(i, True), now))
        elif kind == 1:
            big.append(NewEvent("call.completed", {"kind": "tool", "call": str(i), "name": "search", "ms": 3.2,
                                                   "input": {"args": [], "kwargs": {"q": f"otters {i}"}},
                                                   "output": f"{i} results"}, now))  # fmt: skip
        else:
            big.append(NewEvent("call.completed", {"kind": "step", "call": str(i), "name": "app.parse", "ms": 0.4,
                                                   "output": {"ok": True, "n": i}}, now))  # fmt: skip
    filler.add(BIG, "wf-big", "running", "t0", big, created=now, finished=None)
    calls = sum(1 for e in big if e.data.get("kind") == "llm")
    filler.book.append((now[:13] + ":00", BIG, "gpt-4o-mini", "wf-big", "t0", calls,
                        str(calls * Decimal("0.0004836")), "0", 120 * calls, 80 * calls))  # fmt: skip
    filler.insert(store)


def measure(client: Any, headers: dict[str, str], iters: int) -> dict[str, list[float]]:
    first = client.get("/api/v1/runs?limit=50", headers=headers).json()
    cursor = first["next_cursor"]
    for _ in range(98):  # page 100
        cursor = client.get(f"/api/v1/runs?limit=50&cursor={cursor}", headers=headers).json()["next_cursor"]
    kinds = {
        "list: first page": "/api/v1/runs?limit=50",
        "list: status=failed": "/api/v1/runs?limit=50&status=failed",
        "list: workflow=wf-7": "/api/v1/runs?limit=50&workflow=wf-7",
        "list: tenant=t3": "/api/v1/runs?limit=50&tenant=t3",
        "list: status=running,blocked": "/api/v1/runs?limit=50&status=running,blocked",
        "list: q=bad input 9999": "/api/v1/runs?limit=50&q=bad%20input%209999",
        "list: min_cost_usd=0.001": "/api/v1/runs?limit=50&min_cost_usd=0.001",
        "list: page 100 (cursor)": f"/api/v1/runs?limit=50&cursor={cursor}",
        "detail: 10k-event run": f"/api/v1/runs/{BIG}",
        "events: 200 of 10k": f"/api/v1/runs/{BIG}/events?after=5000&limit=200",
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    t0 = time.perf_counter()  # the first view of the big run verifies its whole chain
    assert client.get(kinds["detail: 10k-event run"], headers=headers).status_code == 200
    print(f"first detail view of the 10k-event run (whole chain verified): {(time.perf_counter() - t0) * 1000:.0f} ms")
    for path in kinds.values():  # warm-up
        assert client.get(path, headers=headers).status_code == 200, path
    for _ in range(iters):
        for name, path in kinds.items():
            t0 = time.perf_counter()
            resp = client.get(path, headers=headers)
            times[name].append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200, (path, resp.text[:300])
    return times


def fanout(app: Any, store: Store, headers: dict[str, str], streams: int, rounds: int) -> list[tuple[float, float]]:
    import httpx

    from wflo.server import serve_in_thread

    results: list[tuple[float, float]] = []

    async def one_round() -> tuple[float, float]:
        head = store.get_run(BIG).last_seq
        got: list[float] = []
        ready = asyncio.Event()
        connected = [0]

        async def listen(client: httpx.AsyncClient) -> None:
            async with client.stream("GET", f"/api/v1/stream?run={BIG}&after={head}", headers=headers) as resp:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:])
                    if msg["kind"] == "run":
                        connected[0] += 1
                        if connected[0] == streams:
                            ready.set()
                    elif msg["kind"] == "event":
                        got.append(time.perf_counter())
                        return

        limits = httpx.Limits(max_connections=streams + 10)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            tasks = [asyncio.create_task(listen(client)) for _ in range(streams)]
            await asyncio.wait_for(ready.wait(), 60)
            r: RunRecord = await asyncio.to_thread(store.get_run, BIG)
            t0 = time.perf_counter()
            await asyncio.to_thread(store.append, BIG, Head(r.last_seq, r.last_hash),
                                    [NewEvent("call.completed", {"kind": "step", "call": "x", "name": "probe"})],
                                    owner=None)  # fmt: skip
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        lat = sorted((t - t0) * 1000 for t in got)
        return statistics.median(lat), lat[-1]

    with serve_in_thread(app) as base:
        for _ in range(rounds):
            results.append(asyncio.run(one_round()))
    return results


def report(title: str, times: dict[str, list[float]]) -> dict[str, Any]:
    print(f"\n{title}")
    print(f"{'request':34} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    out = {}
    for name, values in times.items():
        med, p95 = statistics.median(values), pct(values, 0.95)
        out[name] = {"median_ms": round(med, 1), "p95_ms": round(p95, 1)}
        print(f"{name:34} {med:10.1f} {p95:8.1f} {max(values):8.1f}")
    return out


def run_store(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from wflo.auth import access, tokens
    from wflo.server import create_app

    tmp = tempfile.TemporaryDirectory()
    url = f"sqlite:///{tmp.name}/wflo.db" if kind == "sqlite" else fresh_pg("wflo_bench_server")
    _config.reset()
    _config.configure(database=url, cookie_secure=False)
    store = _config.get_store()
    t0 = time.perf_counter()
    fill(store, args.runs, args.events)
    print(f"\n== {kind}: {args.runs:,} runs + one run of {args.events:,} events inserted in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    acc = access()
    acc.bootstrap("user:bench", who=acc.local("user:bench"))
    _, secret = tokens().create("bench", "viewer", who=acc.local("user:bench"))
    headers = {"Authorization": f"Bearer {secret}"}
    app = create_app()
    result: dict[str, Any] = {}
    with TestClient(app) as client:
        result["with_indexes"] = report(f"{kind}: through the ASGI app, {args.iters} each",
                                        measure(client, headers, args.iters))  # fmt: skip
        if args.streams:
            fan = fanout(app, store, headers, args.streams, args.fanout_rounds)
            meds, worst = [m for m, _ in fan], [w for _, w in fan]
            print(f"\nSSE fan-out: one appended event to {args.streams} open streams, {len(fan)} rounds: "
                  f"median stream {statistics.median(meds):.0f} ms, last stream {statistics.median(worst):.0f} ms "
                  f"(rounds {min(worst):.0f}..{max(worst):.0f} ms)")  # fmt: skip
            result["fanout_ms"] = {"median": round(statistics.median(meds)), "last": round(statistics.median(worst))}
        if args.without_indexes:
            for name in ("runs_list_created", "runs_list_status", "runs_list_workflow", "runs_list_tenant"):
                store.write(lambda cur, n=name: cur.execute(f"DROP INDEX {n}"))
            if kind == "sqlite":
                store.write(lambda cur: cur.execute("ANALYZE"))
            lists = {k: v for k, v in measure(client, headers, max(5, args.iters // 4)).items() if k.startswith("list")}
            result["without_indexes"] = report(f"{kind}: the list WITHOUT the m010 indexes", lists)
    _config.reset()
    tmp.cleanup()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--fanout-rounds", type=int, default=5)
    parser.add_argument("--without-indexes", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    results = {k: run_store(k, args) for k in kinds}
    if args.json:
        out = io.StringIO()
        json.dump(results, out, indent=2)
        print(out.getvalue())


if __name__ == "__main__":
    main()
