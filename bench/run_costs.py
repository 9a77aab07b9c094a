"""A page of runs' costs, cold: the journal summed (what the runs list did before the spend book,
without its per-process cache) against the book (``wflo.cost.run_spend``).

Method. ``bench/server.py``'s store (``--runs`` runs with one priced call each, one run of
``--events`` events, and the book's rows for those calls); the 50 newest runs (the list's first
page, the big run among them) and the big run alone, each side timed alternately call by call,
``--rounds`` rounds of 60; each round's median, then the median and spread of the rounds.

    python bench/run_costs.py [--store sqlite|postgres|both] [--runs 20000] [--events 3000]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import statistics
import tempfile
from typing import Any

from _common import alternate, fresh_pg
from server import BIG, fill

from wflo import _config
from wflo.cost import run_spend
from wflo.store import Store


def journal(store: Store, ids: list[str]) -> list[Any]:
    pick = "CAST(data AS json)->>'cost_usd'" if store.dialect == "postgresql" else "json_extract(data, '$.cost_usd')"
    marks = ", ".join("?" * len(ids))
    return store.read(
        f"SELECT chain, seq, {pick} FROM events WHERE chain IN ({marks}) AND type IN ('call.completed', 'call.failed')",
        ids,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for kind in ["sqlite", "postgres"] if args.store == "both" else [args.store]:
        tmp = tempfile.TemporaryDirectory()
        url = f"sqlite:///{tmp.name}/w.db" if kind == "sqlite" else fresh_pg("wflo_bench_run_costs")
        _config.reset()
        _config.configure(database=url)
        store = _config.get_store()
        fill(store, args.runs, args.events)
        page = [r[0] for r in store.read("SELECT id FROM runs ORDER BY created_at DESC, id DESC LIMIT 50")]
        rounds = alternate(
            {
                "page of 50: journal": lambda s=store, p=page: journal(s, p),
                "page of 50: book": lambda s=store, p=page: run_spend(s, p),
                f"{args.events:,}-event run: journal": lambda s=store: journal(s, [BIG]),
                f"{args.events:,}-event run: book": lambda s=store: run_spend(s, [BIG]),
            },
            60,
            args.rounds,
        )
        for name in rounds[0]:
            meds = [r[name] / 1000 for r in rounds]
            print(
                f"{kind:8} {name:26} median {statistics.median(meds):7.2f} ms  rounds {min(meds):.2f}..{max(meds):.2f}"
            )
        _config.reset()
        tmp.cleanup()


if __name__ == "__main__":
    main()
