"""Sandbox start-up latency and throughput for ``print(1)``: cold, warm pool, gVisor, beside bare subprocesses.

All in one run, on this machine, with the same program:

- ``python3 -c`` bare: ``subprocess.run(["/usr/bin/python3", "-I", "-c", "print(1)"])``, no isolation (the floor);
- ``bwrap`` bare: the same under ``bwrap --unshare-all --ro-bind /usr /usr ...`` with no supervisor (what the sandbox's namespaces cost);
- ``wflo.Sandbox()`` cold: namespaces, seccomp, cgroup, rlimits, privilege drop, launcher, supervisor, scratch dir;
- ``wflo.Sandbox(pool=N)`` warm: a started sandbox waits with the interpreter loaded; the program arrives on stdin;
- ``wflo.Sandbox(backend="runsc")``: gVisor (left out if runsc is missing).

Three parts, each alternating its sides iteration by iteration (or round by round) so a change
in the machine's load falls on all sides alike:

1. latency: one call at a time; warm calls are spaced so the pool refills between them (an
   agent that runs code every few seconds);
2. throughput: sandboxes per second with 1, 4 and 8 callers at once, cold and warm, beside
   bare bwrap at the same concurrency, over ``--rounds`` rounds (median and spread), with p50/p99
   of the calls' latencies;
3. burst: ``--burst`` calls back to back on a warm ``pool=4``; p99 against the median.

    python bench/sandbox.py [--n 100] [--rounds 5] [--per-round 16] [--burst 100] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent.parent / "src"))
_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import pct

from wflo.sandbox import Sandbox
from wflo.sandbox._bwrap import process_limit_kind

CODE = "print(1)"
BWRAP = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
         "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev",
         "/usr/bin/python3", "-I", "-c", CODE]  # fmt: skip


def bare() -> None:
    subprocess.run(["/usr/bin/python3", "-I", "-c", CODE], capture_output=True, check=True)


def bare_bwrap() -> None:
    subprocess.run(BWRAP, capture_output=True, check=True)


def checked(box: Sandbox) -> Callable[[], None]:
    def call() -> None:
        result = box.run_python(CODE)
        if result.stdout != "1\n" or not result.ok:
            raise RuntimeError(f"a sandbox failed: {result}")

    return call


def _ms(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def latency(n: int) -> dict[str, list[float]]:
    cold, warm = Sandbox(), Sandbox(pool=4)
    sides: dict[str, Callable[[], None]] = {
        "python3 -c (bare subprocess)": bare,
        "bwrap, bare (no supervisor)": bare_bwrap,
        "wflo.Sandbox() cold": checked(cold),
        "wflo.Sandbox(pool=4) warm": checked(warm),
    }
    rows: dict[str, list[float]] = {name: [] for name in sides}
    time.sleep(1.0)
    for _ in range(n):
        for name, fn in sides.items():
            rows[name].append(_ms(fn))
        time.sleep(0.05)  # the pool refills between warm calls
    warm.close()
    if shutil.which("runsc"):
        gvisor = Sandbox(backend="runsc")
        rows["wflo.Sandbox(backend='runsc')"] = [_ms(checked(gvisor)) for _ in range(max(5, n // 10))]
    return rows


def throughput(rounds: int, per_round: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    cold = Sandbox()
    pools = {c: Sandbox(pool=max(4, c)) for c in (1, 4, 8)}
    time.sleep(1.0)
    samples: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    for _ in range(rounds):
        for c in (1, 4, 8):
            sides = {"bwrap, bare": bare_bwrap, "wflo cold": checked(cold), "wflo warm": checked(pools[c])}
            for name, fn in sides.items():
                calls = per_round * c
                t0 = time.perf_counter()
                with ThreadPoolExecutor(c) as ex:
                    lat = list(ex.map(lambda _, fn=fn: _ms(fn), range(calls)))  # type: ignore[misc]
                rate = calls / (time.perf_counter() - t0)
                rates, lats = samples.setdefault((name, c), ([], []))
                rates.append(rate)
                lats.extend(lat)
                time.sleep(0.3)  # pools refill; the next side starts from the same state
    for pool in pools.values():
        pool.close()
    for (name, c), (rates, lats) in samples.items():
        out[f"{name} x{c}"] = {
            "concurrency": c, "per_s": statistics.median(rates), "per_s_min": min(rates), "per_s_max": max(rates),
            "p50_ms": statistics.median(lats), "p99_ms": pct(lats, 0.99), "calls": len(lats),
        }  # fmt: skip
    return out


def burst(rounds: int, size: int) -> dict[str, Any]:
    """Back-to-back calls on a warm pool, and (the machine's own noise, alternating round by
    round) the same number of bare ``python3 -c``."""
    out: dict[str, Any] = {"calls": size, "rounds": rounds}
    ratios: dict[str, list[float]] = {"warm": [], "bare": []}
    p50s: dict[str, list[float]] = {"warm": [], "bare": []}
    p99s: dict[str, list[float]] = {"warm": [], "bare": []}
    with Sandbox(pool=4) as box:
        sides = {"warm": checked(box), "bare": bare}
        for _ in range(rounds):
            for name, call in sides.items():
                time.sleep(1.0)  # a full pool at the start of each burst
                lat = [_ms(call) for _ in range(size)]
                p50s[name].append(statistics.median(lat))
                p99s[name].append(pct(lat, 0.99))
                ratios[name].append(p99s[name][-1] / p50s[name][-1])
    for name in sides:
        out[name] = {"p50_ms": statistics.median(p50s[name]), "p99_ms": statistics.median(p99s[name]),
                     "p99_over_p50": statistics.median(ratios[name]), "p99_over_p50_max": max(ratios[name])}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="latency: calls per side")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=16, help="throughput: calls per caller per round")
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"process limit here: {process_limit_kind()}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}",
          file=_sys.stderr)  # fmt: skip
    rows = latency(args.n)
    floor = statistics.median(rows["python3 -c (bare subprocess)"])
    lat = {name: {"n": len(v), "median_ms": statistics.median(v), "p99_ms": pct(v, 0.99),
                  "x_bare_python": statistics.median(v) / floor} for name, v in rows.items()}  # fmt: skip
    thr = throughput(args.rounds, args.per_round)
    bur = burst(args.rounds, args.burst)
    if args.json:
        print(json.dumps({"latency": lat, "throughput": thr, "burst": bur}, indent=2))
        return
    print(f"{'latency, one at a time':34} {'n':>5} {'median ms':>10} {'p99 ms':>9} {'vs python3 -c':>13}")
    for name, r in lat.items():
        print(f"{name:34} {r['n']:>5} {r['median_ms']:>10.1f} {r['p99_ms']:>9.1f} {r['x_bare_python']:>12.2f}x")
    print()
    print(f"{'throughput':20} {'per s (median)':>14} {'spread':>13} {'p50 ms':>8} {'p99 ms':>8} {'calls':>6}")
    for name, r in sorted(thr.items(), key=lambda kv: (kv[1]["concurrency"], kv[0])):
        spread = f"{r['per_s_min']:.1f}-{r['per_s_max']:.1f}"
        print(f"{name:20} {r['per_s']:>14.1f} {spread:>13} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['calls']:>6}")
    print()
    for name, label in (("warm", "wflo.Sandbox(pool=4)"), ("bare", "python3 -c, bare")):
        r = bur[name]
        print(f"burst of {bur['calls']}, {label:22} ({bur['rounds']} rounds): p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms, p99/p50 {r['p99_over_p50']:.2f} (worst {r['p99_over_p50_max']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
