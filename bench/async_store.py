"""How an async run should reach PostgreSQL: a hop to the store's thread, or psycopg's async driver.

An async workflow must not block its event loop on the store. Two ways to await one commit
(an ``INSERT`` of a ~200-byte row in its own transaction, the shape of a step's append):

- ``sync, on the loop``: the blocking call made on the loop (the floor; what wflo did before);
- ``thread hop``: the same sync call awaited on the store's thread (``Store.off_loop``);
- ``psycopg async``: ``await`` on a psycopg ``AsyncConnection``, on the loop.

Each iteration runs the three in a rotating order; each round gives medians; the figures are
the median of the round medians with their spread. Also: the same with 8 coroutines committing
at once (each its own connection), per commit.

    python bench/async_store.py [--iterations 300] [--rounds 5]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import fresh_pg

ROW = "x" * 200
SQL = "INSERT INTO t (body) VALUES (%s)"


async def cases(url: str, width: int) -> dict[str, Callable[[], Awaitable[Any]]]:
    import psycopg

    from wflo.store import open_store

    store = open_store(url)  # only its threads are used here
    sync = [psycopg.connect(url, autocommit=True) for _ in range(width)]
    sync[0].execute("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, body text)")
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(width)]

    async def on_loop() -> None:
        for c in sync:
            c.execute(SQL, (ROW,))

    async def hop() -> None:
        await asyncio.gather(*(store.off_loop(c.execute, SQL, (ROW,), key=i) for i, c in enumerate(sync)))

    async def aio() -> None:
        await asyncio.gather(*(c.execute(SQL, (ROW,)) for c in conns))

    return {"sync, on the loop": on_loop, "thread hop": hop, "psycopg async": aio}


async def alternate(
    cases: dict[str, Callable[[], Awaitable[Any]]], iterations: int, rounds: int
) -> list[dict[str, float]]:
    names = list(cases)
    for _ in range(20):
        for name in names:
            await cases[name]()
    out = []
    for _ in range(rounds):
        samples: dict[str, list[float]] = {n: [] for n in names}
        for i in range(iterations):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter_ns()
                await cases[name]()
                samples[name].append((time.perf_counter_ns() - t0) / 1000)
        out.append({n: statistics.median(v) for n, v in samples.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"one commit awaited from an event loop, PostgreSQL, alternating per iteration, {args.rounds} rounds x "
          f"{args.iterations} (python {sys.version.split()[0]}); median of round medians [min..max]")  # fmt: skip
    for width in (1, 8):

        async def run(width: int = width) -> list[dict[str, float]]:
            return await alternate(
                await cases(fresh_pg(f"wflo_bench_async_{width}"), width), args.iterations, args.rounds
            )

        rounds = asyncio.run(run())
        print(f"\n{width} commit(s) at once" + (" (gather; per batch)" if width > 1 else ""))
        for name in rounds[0]:
            values = [r[name] for r in rounds]
            print(f"  {name:20} {statistics.median(values):8.0f} µs  [{min(values):.0f}..{max(values):.0f}]")


if __name__ == "__main__":
    main()
