"""wflo's durable steps and empty workflows beside one raw commit and DBOS Transact, in one run.

Method. For each store every case runs once per iteration, ``--iterations`` times per round,
``--rounds`` rounds, each case after a case of another side's process (``_common.alternate_timed``
with ``sides``: a case that follows its own process's case skips the wake-up the others pay),
each side's cases rotating through its places every iteration (so drift of a loaded machine
hits all cases alike). Cases: an empty workflow and a workflow of 10 tiny steps on wflo
(sync, and async on the same store) and on DBOS Transact (if installed), and a *raw durable
commit* (an ``INSERT`` of a ~200-byte row committed on its own: SQLite in WAL with
``synchronous=FULL``, PostgreSQL with ``synchronous_commit=on``; the least any durable step can
cost), once and 11 times in a row.

Per durable step = (10-step workflow - empty workflow) / 10, so the workflow's start and end
are not spread over its steps. A step is compared with a raw commit *in a row*, derived the same
way ((11 commits - 1 commit) / 10): a case that follows the other sides' cases first wakes its
process and its database connection, which on this VM costs about as much as a commit, and both
derivations cancel that out. An empty workflow is also given in raw commits (single): a run's
creation (before its body runs) and its end (before its value returns) are each a durable
commit, so 2.0 is the floor of any engine that keeps runs durable. Each round gives medians; the
figures are the median of the round medians, with their spread (min..max). Durability is
matched: on SQLite wflo runs with ``synchronous=FULL`` and DBOS with its default (rollback
journal, ``synchronous=FULL``), on PostgreSQL both commit synchronously.

Each side (the raw commit, wflo, DBOS) runs in a process of its own (``_common.Child``), as each
would in production; this process only asks them in turn to run one case, timed in the side's
process: the engines share no interpreter (GIL, garbage collector, imports). ``--one-process``
keeps the older method (everything loaded here) to compare; quiet, the two gave close ratios.

    python bench/engine.py [--iterations 60] [--rounds 5] [--stores sqlite,postgres] [--json] [--one-process]

DBOS Transact is an optional peer: ``pip install dbos`` (into a separate environment is fine
if it can also import wflo).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import asyncio
import json
import logging
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from _common import Child, alternate, alternate_timed, fresh_pg

STEPS = 10
ROW = "x" * 200


# ----------------------------------------------------------------------------- cases
def raw_sqlite(path: str) -> Callable[[], Any]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")

    def commit() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (body) VALUES (?)", (ROW,))
        conn.execute("COMMIT")

    return commit


def raw_pg(url: str) -> Callable[[], Any]:
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, body text)")

    def commit() -> None:
        conn.execute("INSERT INTO t (body) VALUES (%s)", (ROW,))  # its own transaction: one round trip

    return commit


def raw_cases(url: str) -> dict[str, Callable[[], Any]]:
    """The raw durable commit on ``url`` (a ``sqlite:///`` path or a PostgreSQL URL): once, and
    ``STEPS + 1`` times in a row (per commit in a row = the difference / ``STEPS``, derived as a
    step is, so the first call's cost of a process or connection that was idle cancels out)."""
    commit = raw_sqlite(url.removeprefix("sqlite:///")) if url.startswith("sqlite:") else raw_pg(url)

    def in_a_row() -> None:
        for _ in range(STEPS + 1):
            commit()

    return {"raw commit": commit, "raw commits": in_a_row}


def wflo_cases(url: str) -> dict[str, Callable[[], Any]]:
    import wflo

    wflo.configure(database=url)

    @wflo.step
    def tiny(i: int) -> int:
        return i + 1

    @wflo.workflow(name="bench.empty", guards=False)
    def empty() -> int:
        return 0

    @wflo.workflow(name="bench.steps", guards=False)
    def steps() -> int:
        return sum(tiny(i) for i in range(STEPS))

    @wflo.step
    async def atiny(i: int) -> int:
        return i + 1

    @wflo.workflow(name="bench.aempty", guards=False)
    async def aempty() -> int:
        return 0

    @wflo.workflow(name="bench.asteps", guards=False)
    async def asteps() -> int:
        total = 0
        for i in range(STEPS):
            total += await atiny(i)
        return total

    loop = asyncio.new_event_loop()
    return {
        "wflo empty": empty.run,
        "wflo steps": steps.run,
        "wflo async empty": lambda: loop.run_until_complete(aempty.arun()),
        "wflo async steps": lambda: loop.run_until_complete(asteps.arun()),
    }


def dbos_cases(url: str) -> dict[str, Callable[[], Any]] | str:
    try:
        from dbos import DBOS
    except ImportError:
        return "DBOS Transact not installed (pip install dbos)"
    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(config={"name": "wflobench", "system_database_url": url, "run_admin_server": False})  # type: ignore[typeddict-unknown-key]

    @DBOS.step()
    def tiny(i: int) -> int:
        return i + 1

    @DBOS.workflow()
    def empty() -> int:
        return 0

    @DBOS.workflow()
    def steps() -> int:
        return sum(tiny(i) for i in range(STEPS))

    DBOS.launch()
    return {"DBOS empty": empty, "DBOS steps": steps}


def dbos_close() -> None:
    try:
        from dbos import DBOS
    except ImportError:
        return
    DBOS.destroy(destroy_registry=True)


# ----------------------------------------------------------------------------- the loop
def derive(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Per-round figures (per step, ratios), then the median and spread of each."""
    per_round: list[dict[str, float]] = []
    for r in rounds:
        d = dict(r)
        for engine in ("wflo", "wflo async", "DBOS"):
            if f"{engine} steps" in r:
                d[f"{engine} per step"] = (r[f"{engine} steps"] - r[f"{engine} empty"]) / STEPS
        raw = r["raw commit"]
        in_a_row = d["raw commit in a row"] = (r["raw commits"] - raw) / STEPS
        for engine in ("wflo", "wflo async", "DBOS"):
            if f"{engine} empty" in r:  # a run's creation and its end: two durable commits at least
                d[f"{engine} empty / raw commit"] = r[f"{engine} empty"] / raw
        for engine in ("wflo", "wflo async"):
            if f"{engine} per step" in d:
                d[f"{engine} per step / raw commit in a row"] = d[f"{engine} per step"] / in_a_row
            if "DBOS empty" in r:
                d[f"{engine} empty / DBOS empty"] = r[f"{engine} empty"] / r["DBOS empty"]
                d[f"{engine} per step / DBOS per step"] = d[f"{engine} per step"] / d["DBOS per step"]
        per_round.append(d)
    keys = list(per_round[0])
    return {k: {"median": statistics.median(p[k] for p in per_round),
                "min": min(p[k] for p in per_round), "max": max(p[k] for p in per_round)} for k in keys}  # fmt: skip


def _one_process(store: str, urls: dict[str, str], args: Any, notes: dict[str, str]) -> dict[str, Any]:
    """``--one-process``: every side loaded in this process (the method before 2026-11-30),
    kept to show what one engine's background threads cost the other."""
    from wflo import _config

    cases = dict(raw_cases(urls["raw"]))
    cases.update(wflo_cases(urls["wflo"]))
    dbos = "skipped (--no-dbos)" if args.no_dbos else dbos_cases(urls["dbos"])
    if isinstance(dbos, str):
        notes[store] = dbos
    else:
        cases.update(dbos)
    try:
        return derive(alternate(cases, args.iterations, args.rounds))
    finally:
        if not isinstance(dbos, str):
            dbos_close()
        _config.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=60, help="iterations per round (each runs every case)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--no-dbos", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--one-process", action="store_true", help="load every side in this process (the old method; biased)"
    )
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="wflo-bench-")
    results: dict[str, Any] = {}
    notes: dict[str, str] = {}

    for store in args.stores.split(","):
        if store == "sqlite":
            urls = {"raw": f"sqlite:///{tmp}/raw.db", "wflo": f"sqlite:///{tmp}/wflo.db?synchronous=FULL",
                    "dbos": f"sqlite:///{tmp}/dbos.sqlite"}  # fmt: skip
        else:
            urls = {"raw": fresh_pg("wflo_bench_raw"), "wflo": fresh_pg("wflo_bench_engine"),
                    "dbos": fresh_pg("dbos_bench_engine")}  # fmt: skip
        if args.one_process:
            results[store] = _one_process(store, urls, args, notes)
            continue
        sides = {"raw": "engine:raw_cases", "wflo": "engine:wflo_cases", "dbos": "engine:dbos_cases"}
        if args.no_dbos:
            del sides["dbos"]
            notes[store] = "skipped (--no-dbos)"
        children = {side: Child(factory, urls[side]) for side, factory in sides.items()}
        try:
            cases: dict[str, Callable[[], float]] = {}
            for child in children.values():
                cases.update(child.cases())
                if child.skipped:
                    notes[store] = child.skipped
            sides = [child.names for child in children.values()]
            results[store] = derive(alternate_timed(cases, args.iterations, args.rounds, sides=sides))
        finally:
            for child in children.values():
                child.close()
    if args.json:
        print(json.dumps({"results": results, "notes": notes}, indent=2))
        return
    print(f"engine overhead, alternating per iteration, {args.rounds} rounds x {args.iterations} iterations "
          f"(python {sys.version.split()[0]}); median of round medians [min..max]")  # fmt: skip
    for store, figures in results.items():
        print(f"\n{store}" + (f"  ({notes[store]})" if store in notes else ""))
        for key, v in figures.items():
            unit = "" if "/" in key else " µs"
            fmt = "{:.2f}" if "/" in key else "{:.0f}"
            print(f"  {key:36} {fmt.format(v['median']):>8}{unit}  [{fmt.format(v['min'])}..{fmt.format(v['max'])}]")


if __name__ == "__main__":
    main()
