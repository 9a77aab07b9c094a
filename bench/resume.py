"""Memory a resumed run holds for its journal, per finished step (tracemalloc).

Method. A workflow of ``--steps`` steps (each returns a small dict, as an agent's tool or LLM
step would) runs to its end on SQLite; then its journal is loaded as a resuming worker loads
it (``RunContext.load``), ``--rounds`` times, under ``tracemalloc``. Reported per finished
step: the memory the loaded context still holds (retained), and the peak while loading
(rows read from the store included). Goal (issue 20): retained ≤ 1 KB per finished step.

    python bench/resume.py [--steps 2000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import tracemalloc
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import wflo
    from wflo import _config
    from wflo.engine import RunContext

    wflo.configure(database=f"sqlite:///{tempfile.mkdtemp()}/resume.db")

    @wflo.step
    def work(i: int) -> dict[str, Any]:
        return {"i": i, "answer": f"result {i}", "tokens": 120}

    @wflo.workflow(name="bench.resume", guards=False)
    def flow(n: int) -> int:
        return sum(work(i)["i"] for i in range(n))

    flow.run(args.steps)
    store = _config.get_store()
    record = store.list_runs(workflow="bench.resume", limit=1)[0]
    retained: list[float] = []
    peaks: list[float] = []
    for _ in range(args.rounds):
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        ctx = RunContext.load(store, record, "bench")
        gc.collect()
        now, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(ctx.journal) == args.steps
        retained.append((now - base) / args.steps)
        peaks.append((peak - base) / args.steps)
        del ctx
    out = {
        "steps": args.steps,
        "retained_bytes_per_step": statistics.median(retained),
        "retained_spread": [min(retained), max(retained)],
        "peak_bytes_per_step": statistics.median(peaks),
    }
    _config.reset()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"resume memory, {args.steps} finished steps, {args.rounds} rounds: "
        f"retained {out['retained_bytes_per_step']:.0f} B/step "
        f"[{min(retained):.0f}..{max(retained):.0f}], peak while loading {out['peak_bytes_per_step']:.0f} B/step"
    )


if __name__ == "__main__":
    main()
