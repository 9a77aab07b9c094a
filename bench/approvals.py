"""Approval latency: from a decision committed to the waiting run resuming on a worker.

A worker process idles; this process starts runs whose tool needs approval, waits until each
is `waiting`, approves it, and measures the time until the run's journal shows it resumed
(`run.resumed` event time minus the decision's commit time, both from the store's clock).
PostgreSQL workers wake on LISTEN/NOTIFY; SQLite workers poll every WFLO_POLL_INTERVAL.

    python bench/approvals.py [--runs 30] [--stores sqlite,postgres] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import fresh_pg

HERE = Path(__file__).parent
APP = """
import wflo

@wflo.tool(approval=wflo.Approval(approvers=["user:bench-approver"]))
def act(i: int) -> int:
    return i

@wflo.workflow(name="bench-approval")
def flow(i: int) -> int:
    return act(i)
"""


def measure(url: str, runs: int, workdir: Path) -> dict[str, float]:
    (workdir / "benchapp.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(
        {
            "WFLO_DATABASE_URL": url,
            "PYTHONPATH": os.pathsep.join([str(workdir), *sys.path]),
            "WFLO_PRINCIPAL": "user:bench-agent",
        }
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "wflo.cli", "worker", "-i", "benchapp", "-q", "-c", "4"], env=env, cwd=workdir
    )
    os.environ.update({"WFLO_DATABASE_URL": url, "WFLO_PRINCIPAL": "user:bench-agent"})
    sys.path.insert(0, str(workdir))
    import wflo
    from wflo.store import parse_iso

    wflo.configure(database=url)
    import benchapp  # type: ignore[import-not-found]

    latencies = []
    try:
        for i in range(runs):
            handle = benchapp.flow.start(i)
            while not wflo.approvals.list(run_id=handle.id):
                time.sleep(0.002)
            while handle.status() != "waiting":
                time.sleep(0.002)
            req = wflo.approvals.list(run_id=handle.id)[0]
            decided = wflo.approvals.approve(req.id, principal="user:bench-approver")
            assert handle.result(timeout=30) == i
            resumed = next(e for e in handle.events() if e.type == "run.resumed")
            latencies.append((parse_iso(resumed.at) - parse_iso(decided.decided_at)).total_seconds() * 1000)
    finally:
        worker.terminate()
        worker.wait(30)
        sys.path.remove(str(workdir))
        sys.modules.pop("benchapp", None)
    latencies.sort()
    return {
        "median_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db" if store == "sqlite" else fresh_pg("wflo_bench_approvals")
            results[store] = measure(url, args.runs, Path(tmp))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"approval latency: decision committed -> run resumed on a worker ({args.runs} runs)")
    print(f"{'store':10} {'wake-up':22} {'median ms':>10} {'p99 ms':>10}")
    for store, r in results.items():
        how = "LISTEN/NOTIFY" if store == "postgres" else "poll every 0.2 s"
        print(f"{store:10} {how:22} {r['median_ms']:10.1f} {r['p99_ms']:10.1f}")


if __name__ == "__main__":
    main()
