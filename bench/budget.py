"""Latency a guarded LLM call adds, against the local scripted server, on SQLite and PostgreSQL.

The same Chat Completions call through the real ``openai`` SDK to ``wflo.testing.LLMServer``:
(a) unguarded (no run), (b) inside a wflo run with a budget (price lookup, worst-case bound,
reservation, settlement and journal event). Added latency = (b) - (a), median and p99.

    python bench/budget.py [--calls 300] [--stores sqlite,postgres] [--json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).parent))
import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import openai
from _common import fresh_pg, pct

import wflo
from wflo import _config
from wflo.testing import LLMServer, Reply


def _timed(client: openai.OpenAI, calls: int) -> list[float]:
    out = []
    for i in range(calls):
        t0 = time.perf_counter_ns()
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=50
        )
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def measure(url: str, calls: int, llm: LLMServer) -> dict[str, Any]:
    wflo.configure(database=url)
    client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
    _timed(client, 20)
    plain = _timed(client, calls)
    result: dict[str, list[float]] = {}

    @wflo.workflow(
        name="bench.budget", budget=wflo.Budget(usd="1000"), guards=wflo.LoopGuard(max_steps=None, max_repeats=None)
    )
    def guarded(n: int) -> None:
        _timed(client, 20)
        result["guarded"] = _timed(client, n)

    guarded.run(calls)
    client.close()
    _config.reset()
    g = result["guarded"]
    return {
        "unguarded_median_us": statistics.median(plain), "guarded_median_us": statistics.median(g),
        "added_median_us": statistics.median(g) - statistics.median(plain), "added_p99_us": pct(g, 0.99) - pct(plain, 0.99),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = {}
    with LLMServer() as llm:
        llm.responder = lambda r: Reply("fine thanks", output_tokens=2)
        for store in args.stores.split(","):
            url = f"sqlite:///{tempfile.mkdtemp()}/bench.db" if store == "sqlite" else fresh_pg("wflo_bench_budget")
            rows[store] = measure(url, args.calls, llm)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"guarded LLM call vs unguarded, {args.calls} calls through the openai SDK to a local server")
    print(
        f"{'store':9} {'unguarded µs':>13} {'guarded µs':>11} {'added median µs':>16} {'added p99 µs':>13} {'ratio':>6}"
    )
    for store, r in rows.items():
        ratio = r["guarded_median_us"] / r["unguarded_median_us"]
        print(
            f"{store:9} {r['unguarded_median_us']:13.0f} {r['guarded_median_us']:11.0f} {r['added_median_us']:16.0f} {r['added_p99_us']:13.0f} {ratio:6.2f}"
        )
    print("(pydantic-ai UsageLimits and LiteLLM's budget path are not installed here; see docs/benchmarks.md)")


if __name__ == "__main__":
    main()
