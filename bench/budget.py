"""Latency a guarded LLM call adds, against the local scripted server, on SQLite and PostgreSQL.

The same Chat Completions call through the real ``openai`` SDK to ``wflo.testing.LLMServer``,
guarded (inside a wflo run with a budget: price lookup, worst-case bound, reservation,
settlement and journal event) and unguarded (the same client, the same loop, in a context
without the run), alternating call by call (the order flips every iteration) so that drift
of the machine hits both sides alike. Each round reports the added median; the totals are
the median of the per-iteration differences and the p99 of guarded minus the p99 of
unguarded, over all rounds. SQL statements are counted at the driver (every ``execute``,
BEGIN and COMMIT included: on PostgreSQL each is one round trip), for the guarded calls only.

    python bench/budget.py [--calls 200] [--rounds 5] [--stores sqlite,postgres] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import contextvars
import json
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import openai
from _common import fresh_pg, pct

import wflo
from wflo import _config
from wflo.testing import LLMServer, Reply

# ----------------------------------------------------------------------------- statement counting
_counts: Counter[str] = Counter()
_counting = threading.local()


def _count(sql: str) -> None:
    if getattr(_counting, "on", False):
        word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
        _counts[word] += 1


class _SqliteCursor(sqlite3.Cursor):
    def execute(self, sql: str, params: Any = (), /) -> Any:  # type: ignore[override]
        _count(sql)
        return super().execute(sql, params)

    def executemany(self, sql: str, params: Any, /) -> Any:  # type: ignore[override]
        _count(sql)
        return super().executemany(sql, params)


class _SqliteConnection(sqlite3.Connection):
    def cursor(self, factory: Any = _SqliteCursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)

    def execute(self, sql: str, params: Any = (), /) -> Any:  # type: ignore[override]
        _count(sql)
        return super().execute(sql, params)


def _install_counters() -> None:
    connect = sqlite3.connect

    def counted_sqlite(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("factory", _SqliteConnection)
        return connect(*args, **kwargs)

    sqlite3.connect = counted_sqlite  # type: ignore[assignment]
    try:
        import psycopg
    except ImportError:
        return

    class _PgCursor(psycopg.Cursor):  # type: ignore[type-arg]
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            _count(str(query))
            return super().execute(query, params, **kwargs)

        def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
            _count(str(query))  # one round trip per row unless pipelined; counted once
            return super().executemany(query, params_seq, **kwargs)

    # psycopg.connect is psycopg.Connection.connect, which the store's pool (psycopg_pool) calls.
    pg_connect = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]

    def counted_pg(cls: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cursor_factory", _PgCursor)
        return pg_connect(cls, *args, **kwargs)

    psycopg.Connection.connect = classmethod(counted_pg)  # type: ignore[method-assign,assignment]


# ----------------------------------------------------------------------------- the loop
def _call(client: openai.OpenAI, i: int) -> float:
    t0 = time.perf_counter_ns()
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=50)
    return (time.perf_counter_ns() - t0) / 1000


def _unguarded(client: openai.OpenAI, i: int) -> float:
    return contextvars.Context().run(_call, client, i)  # a context with no run: not guarded


def measure(url: str, calls: int, rounds: int, llm: LLMServer) -> dict[str, Any]:
    wflo.configure(database=url)
    client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
    out: dict[str, Any] = {}

    @wflo.workflow(
        name="bench.budget", budget=wflo.Budget(usd="1000"), guards=wflo.LoopGuard(max_steps=None, max_repeats=None)
    )
    def loop(n: int) -> None:
        for i in range(20):  # warm both paths
            _call(client, i)
            _unguarded(client, i)
        guarded: list[float] = []
        plain: list[float] = []
        diffs: list[float] = []
        per_round: list[float] = []
        _counts.clear()
        for r in range(rounds):
            round_diffs = []
            for i in range(n):
                k = r * n + i
                if k % 2:
                    _counting.on = True
                    g = _call(client, k)
                    _counting.on = False
                    u = _unguarded(client, k)
                else:
                    u = _unguarded(client, k)
                    _counting.on = True
                    g = _call(client, k)
                    _counting.on = False
                guarded.append(g)
                plain.append(u)
                round_diffs.append(g - u)
            diffs += round_diffs
            per_round.append(statistics.median(round_diffs))
        total = rounds * n
        out.update(
            unguarded_median_us=statistics.median(plain), guarded_median_us=statistics.median(guarded),
            added_median_us=statistics.median(diffs), added_p99_us=pct(guarded, 0.99) - pct(plain, 0.99),
            round_medians_us=[round(x) for x in per_round],
            statements_per_call=sum(_counts.values()) / total,
            transactions_per_call=_counts["COMMIT"] / total,
            statements_by_kind={k: round(v / total, 2) for k, v in sorted(_counts.items())},
        )  # fmt: skip

    loop.run(calls)
    client.close()
    _config.reset()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="calls per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    _install_counters()
    rows = {}
    with LLMServer() as llm:
        llm.responder = lambda r: Reply("fine thanks", output_tokens=2)
        for store in args.stores.split(","):
            url = f"sqlite:///{tempfile.mkdtemp()}/bench.db" if store == "sqlite" else fresh_pg("wflo_bench_budget")
            rows[store] = measure(url, args.calls, args.rounds, llm)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"guarded vs unguarded LLM call, alternating, {args.rounds} rounds x {args.calls} calls each side, "
        "openai SDK to a local server"
    )
    print(
        f"{'store':9} {'unguarded µs':>13} {'guarded µs':>11} {'added median µs':>16} {'added p99 µs':>13} "
        f"{'round medians µs':>24} {'stmts/call':>10} {'tx/call':>8}"
    )
    for store, r in rows.items():
        spread = f"{min(r['round_medians_us'])}..{max(r['round_medians_us'])}"
        print(
            f"{store:9} {r['unguarded_median_us']:13.0f} {r['guarded_median_us']:11.0f} {r['added_median_us']:16.0f} "
            f"{r['added_p99_us']:13.0f} {spread:>24} {r['statements_per_call']:10.1f} {r['transactions_per_call']:8.1f}"
        )
        print(f"{'':9} statements per guarded call: {r['statements_by_kind']}")


if __name__ == "__main__":
    main()
