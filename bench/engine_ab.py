"""Two versions of wflo's engine side by side: bench/engine.py's wflo cases, alternating per iteration.

One child process per (version, store, round) imports its own wflo (``--before SRC``, ``--after SRC``:
``src`` folders, e.g. of a ``git worktree`` or ``git archive`` of the base commit); the driver
asks each child in turn to run one case once and time it, alternating the two versions every
iteration (the order flipping), and the cases in a rotating order. Each round has its own pair
of children on fresh databases, their spawning order and database names swapped every other
round (with one pair for the whole run, the same code read up to 1.2x slower on one side
under load). Each round gives medians;
printed: the median of the round medians with their spread, and after/before per round.

    python bench/engine_ab.py --before /tmp/base/src --after src [--iterations 40] [--rounds 6]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import statistics
import sys
import tempfile

from _common import Child, fresh_pg

CASES = ["wflo async empty", "wflo async steps", "wflo empty", "wflo steps"]
FIGURES = ["wflo async empty", "wflo async per step", "wflo empty", "wflo per step"]


def run_store(store: str, sides: dict[str, str], iterations: int, rounds: int) -> list[dict[str, float]]:
    """Per round, the median µs of each side and case. Each round starts its own pair of
    processes on fresh databases, spawned in alternating order and given each other's database
    names every other round: a bias of a process's place (its CPU, its database, being spawned
    first) falls on both sides alike instead of on one for the whole run."""
    return [_round(store, sides, iterations, flip=r % 2 == 1) for r in range(rounds)]


def _round(store: str, sides: dict[str, str], iterations: int, *, flip: bool) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix="wflo-ab-")
    names = list(sides)[::-1] if flip else list(sides)
    procs: dict[str, Child] = {}
    for side, slot in zip(names, ("a", "b"), strict=True):
        url = f"sqlite:///{tmp}/{slot}.db?synchronous=FULL" if store == "sqlite" else fresh_pg(f"wflo_bench_ab_{slot}")
        procs[side] = Child("engine:wflo_cases", url, pythonpath=sides[side])
    try:
        ask = {(side, case): procs[side].case(case) for side in names for case in CASES}
        for _ in range(10):  # warm
            for side in names:
                for case in CASES:
                    ask[(side, case)]()
        samples: dict[tuple[str, str], list[float]] = {(s, c): [] for s in sides for c in CASES}
        for i in range(iterations):
            order = names if i % 2 == 0 else names[::-1]
            k = i % len(CASES)
            for case in CASES[k:] + CASES[:k]:
                for side in order:
                    samples[(side, case)].append(ask[(side, case)]())
        med = {f"{s}|{c}": statistics.median(v) for (s, c), v in samples.items()}
        for side in sides:
            for engine in ("wflo async", "wflo"):
                med[f"{side}|{engine} per step"] = (med[f"{side}|{engine} steps"] - med[f"{side}|{engine} empty"]) / 10
        return med
    finally:
        for proc in procs.values():
            proc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the src folder of the base version")
    parser.add_argument("--after", required=True, help="the src folder of the changed version")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument(
        "--rounds", type=int, default=6, help="an even number: the children swap places every other round"
    )
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    sides = {"before": args.before, "after": args.after}
    print(f"before/after, alternating per iteration, {args.rounds} rounds x {args.iterations} iterations "
          f"(python {sys.version.split()[0]}); median of round medians [min..max]")  # fmt: skip
    for store in args.stores.split(","):
        rounds = run_store(store, sides, args.iterations, args.rounds)
        print(f"\n{store}")
        for key in FIGURES:
            line = f"  {key:20}"
            for side in sides:
                v = [r[f"{side}|{key}"] for r in rounds]
                line += f"  {side} {statistics.median(v):6.0f} µs [{min(v):.0f}..{max(v):.0f}]"
            ratios = [r[f"after|{key}"] / r[f"before|{key}"] for r in rounds]
            line += f"  after/before {statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}]"
            print(line, flush=True)


if __name__ == "__main__":
    main()
