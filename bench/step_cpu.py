"""CPU time per sync durable step of two versions of wflo, alternated process by process.

The engine's own Python per step, without the disk: SQLite with ``synchronous=OFF`` (the
commit's flush, which dominates a durable step's wall time, is left out) or a PostgreSQL URL
(the client's CPU; the server's is not counted). Per step = (CPU of a workflow of ``--steps``
tiny steps - CPU of an empty workflow) / ``--steps``, the best of 5 in each process. Each round
runs one fresh process per version, their order flipping every round; printed: the median of
the rounds [lowest..highest] per version and of the after/before ratio per round. CPU time
(``time.process_time``) moves far less than wall time on a shared, loaded machine.

    python bench/step_cpu.py --before /tmp/base/src --after src [--rounds 8] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any


def child(url: str, steps: int) -> None:
    """In the child: print the CPU µs per step of this process's wflo on ``url``."""
    import wflo

    wflo.configure(database=url)

    @wflo.step
    def tiny(i: int) -> int:
        return i + 1

    @wflo.workflow(name="bench.cpu.steps", guards=False)
    def many(n: int) -> int:
        return sum(tiny(i) for i in range(n))

    @wflo.workflow(name="bench.cpu.empty", guards=False)
    def empty(n: int) -> int:
        return n

    def cpu(flow: Any, n: int) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            flow.run(n)
            best = min(best, time.process_time() - start)
        return best

    many.run(50)  # warm: imports, connections, prepared statements
    empty.run(0)
    print((cpu(many, steps) - cpu(empty, 0)) / steps * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="the src folder of the base version")
    parser.add_argument("--after", help="the src folder of the changed version")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--url", default="", help="a PostgreSQL URL (default: a SQLite file, synchronous=OFF)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.url, args.steps)
        return
    if not (args.before and args.after):
        parser.error("--before and --after are required")
    sides = {"before": args.before, "after": args.after}
    got: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in list(sides)[:: -1 if r % 2 else 1]:
            url = args.url or f"sqlite:///{tempfile.mkdtemp(prefix='wflo-cpu-')}/s.db?synchronous=OFF"
            env = {**os.environ, "PYTHONPATH": sides[side]}
            cmd = [sys.executable, __file__, "--child", "--url", url, "--steps", str(args.steps)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            got[side].append(float(out.split()[-1]))
    ratios = [a / b for a, b in zip(got["after"], got["before"], strict=True)]
    for side, values in got.items():
        print(f"{side:7s} {statistics.median(values):6.1f} µs CPU per step [{min(values):.1f}..{max(values):.1f}]")
    print(f"after/before {statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}]")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
