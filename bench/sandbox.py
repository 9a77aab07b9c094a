"""Sandbox start-up latency for ``print(1)``: cold, warm pool, gVisor, beside bare subprocesses.

All in one run, on this machine, with the same program:

- ``python3 -c`` bare: ``subprocess.run(["/usr/bin/python3", "-I", "-c", "print(1)"])``, no isolation (the floor);
- ``bwrap`` bare: the same under ``bwrap --unshare-all --ro-bind /usr /usr ...`` with no supervisor (what the sandbox's namespaces cost);
- ``wflo.Sandbox()`` cold: namespaces, seccomp, cgroup, rlimits, privilege drop, supervisor, scratch dir;
- ``wflo.Sandbox(pool=4)`` warm: a started sandbox waits with the interpreter loaded; the program arrives on stdin;
- ``wflo.Sandbox(backend="runsc")``: gVisor (skipped if runsc is missing).

Warm-pool calls are spaced so the pool refills between them (the steady state of an agent that
runs code every few seconds); ``--burst`` measures back-to-back calls instead.

    python bench/sandbox.py [--n 200] [--burst] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent.parent / "src"))
_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import argparse
import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable

from _common import pct

from wflo.sandbox import Sandbox

CODE = "print(1)"


def _timed(fn: Callable[[], object], n: int, pause: float = 0.0) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
        if pause:
            time.sleep(pause)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--burst", action="store_true", help="warm-pool calls back to back (no refill pause)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.n
    rows: dict[str, list[float]] = {}

    def bare() -> None:
        subprocess.run(["/usr/bin/python3", "-I", "-c", CODE], capture_output=True, check=True)

    def bare_bwrap() -> None:
        subprocess.run(["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
                        "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev",
                        "/usr/bin/python3", "-I", "-c", CODE], capture_output=True, check=True)  # fmt: skip

    cold = Sandbox()
    print(f"measuring {n} runs each of print(1) ...", file=_sys.stderr)
    rows["python3 -c (bare subprocess)"] = _timed(bare, n)
    rows["bwrap, bare (no supervisor)"] = _timed(bare_bwrap, n)
    rows["wflo.Sandbox() cold"] = _timed(lambda: cold.run_python(CODE), n)
    with Sandbox(pool=4) as warm:
        time.sleep(1.0)
        rows["wflo.Sandbox(pool=4) warm"] = _timed(lambda: warm.run_python(CODE), n, 0.0 if args.burst else 0.05)
    if shutil.which("runsc"):
        gvisor = Sandbox(backend="runsc")
        rows["wflo.Sandbox(backend='runsc')"] = _timed(lambda: gvisor.run_python(CODE), max(10, n // 10))

    floor = statistics.median(rows["python3 -c (bare subprocess)"])
    table = {name: {"n": len(v), "median_ms": statistics.median(v), "p99_ms": pct(v, 0.99),
                    "x_bare_python": statistics.median(v) / floor} for name, v in rows.items()}  # fmt: skip
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(f"{'':34} {'n':>5} {'median ms':>10} {'p99 ms':>9} {'vs python3 -c':>13}")
    for name, r in table.items():
        print(f"{name:34} {r['n']:>5} {r['median_ms']:>10.1f} {r['p99_ms']:>9.1f} {r['x_bare_python']:>12.2f}x")


if __name__ == "__main__":
    main()
