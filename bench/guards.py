"""Loop-detector overhead per call, early vs late in one long run (promise P2's cost).

Drives ``LoopState.before`` + ``LoopState.after`` the way the call boundary does, for a
10,000-call agent run (LLM and tool calls alternating, arguments and outputs all different, so
nothing fires), and times each call's detector work. Calls 1-100 are compared with calls
9,901-10,000: if a detector's cost grew with the run's length, the late figures would be larger.
Digests are computed outside the timed part (the boundary computes them once per call anyway).

    python bench/guards.py [--runs 20] [--calls 10000] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent.parent / "src"))
import argparse
import gc
import json
import statistics
import time
from decimal import Decimal

from wflo.guards import LoopGuard, LoopState, Outcome, Signature, digest

CONFIGS = {
    "defaults": LoopGuard(max_steps=None),
    "all detectors": LoopGuard(
        max_steps=None,
        max_llm_calls=100_000,
        max_tool_calls=100_000,
        max_duration="1h",
        max_repeats=3,
        max_oscillation=4,
        max_same_error=3,
        max_no_progress=5,
        max_spend_rate="1000/min",
    ),
}


def stream(calls: int) -> list[tuple[Signature, Outcome]]:
    out = []
    for i in range(1, calls + 1):
        if i % 2:
            sig = Signature(i, "llm", "gpt-4o-mini", digest({"messages": i}), at=float(i) * 0.01)
            outcome = Outcome(output_digest=digest(f"answer {i}"), cost_usd=Decimal("0.0012"))
        else:
            sig = Signature(i, "tool", "search" if i % 4 else "fetch", digest({"q": i}), at=float(i) * 0.01)
            outcome = Outcome(output_digest=digest(f"result {i}")) if i % 10 else Outcome.failure(TimeoutError(i))
        out.append((sig, outcome))
    return out


def one_run(guard: LoopGuard, calls: list[tuple[Signature, Outcome]]) -> list[int]:
    state = LoopState(guard, started_at=0.0, run_id="bench")
    before, after, clock = state.before, state.after, time.perf_counter_ns
    times = []
    for sig, outcome in calls:
        t0 = clock()
        before(sig)
        after(sig, outcome)
        times.append(clock() - t0)
    assert state.stopped is None, state.stopped
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    calls = stream(args.calls)
    windows = {"calls 1-100": slice(0, 100), f"calls {args.calls - 99}-{args.calls}": slice(args.calls - 100, None)}
    results = []
    for name, guard in CONFIGS.items():
        samples: dict[str, list[float]] = {w: [] for w in windows}
        one_run(guard, calls)  # warm-up
        for _ in range(args.runs):
            gc.collect()
            times = one_run(guard, calls)
            for w, sl in windows.items():
                samples[w].extend(t / 1000 for t in times[sl])
        for w, values in samples.items():
            results.append(
                {"config": name, "window": w, "median_us": statistics.median(values), "p99_us": pct(values, 0.99)}
            )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"loop detectors, before()+after() per call ({args.runs} runs of {args.calls} calls, Python {_sys.version.split()[0]})"
    )
    print(f"{'config':15} {'window':20} {'median µs':>10} {'p99 µs':>10}")
    for r in results:
        print(f"{r['config']:15} {r['window']:20} {r['median_us']:10.2f} {r['p99_us']:10.2f}")


if __name__ == "__main__":
    main()
