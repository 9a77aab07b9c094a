"""Two runtimes in one process: each with its own store, price book and rate limits.

One service serves two customers, each on their own database, with the model priced as each
negotiated and limited as each pays for. Each customer's runs are started in its runtime and
served by a worker built in it; the scripted LLM server (``wflo.testing.LLMServer``) stands in
for the provider.

python examples/two_runtimes.py
"""

from __future__ import annotations

import tempfile
import threading
from decimal import Decimal

import httpx

import wflo
from wflo.config import Runtime
from wflo.cost import Ledger
from wflo.engine import Worker
from wflo.testing import LLMServer, Reply

MODEL = "house-model"


@wflo.workflow(name="example.summarise", budget=wflo.Budget(usd="1"))
def summarise(url: str, text: str) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Summarise: {text}"}], "max_tokens": 200}
    try:
        answer = httpx.post(url + "/chat/completions", json=body, timeout=30).json()
    except wflo.errors.RateLimitedError:
        return "(over this customer's rate limit: try later)"
    return str(answer["choices"][0]["message"]["content"])


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        acme = Runtime(database=f"sqlite:///{folder}/acme.db", principal="service:acme")
        globex = Runtime(database=f"sqlite:///{folder}/globex.db", principal="service:globex")
        acme.prices.set(MODEL, input_per_mtok="0.5", output_per_mtok="1.5")  # acme's negotiated rate
        globex.prices.set(MODEL, input_per_mtok="3", output_per_mtok="9")
        acme.policies.rate_limit(f"model:{MODEL}", requests_per_minute=2, max_wait=0)  # acme's plan: 2 a minute

        with LLMServer() as llm:
            llm.responder = lambda request: Reply("A short summary.", input_tokens=12, output_tokens=40)
            workers = []
            for rt in (acme, globex):
                with rt.activate():
                    for i in range(3):
                        summarise.options(id=f"doc-{i}").start(llm.openai_url, f"document {i}")
                    workers.append(Worker(workflows=["example.summarise"], concurrency=1))
            # Each worker serves its own runtime's store, priced and limited by that runtime.
            threads = [threading.Thread(target=w.run, kwargs={"max_runs": 3, "idle_timeout": 10}) for w in workers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        expected = {"acme": Decimal("0.000132"), "globex": Decimal("0.001188")}  # 12 tokens in, 40 out a call
        for name, rt in (("acme", acme), ("globex", globex)):
            results = [wflo.engine.RunHandle(f"doc-{i}", rt.store).result(timeout=10) for i in range(3)]
            usages = [Ledger(rt.store).scope_usage(f"run:doc-{i}") for i in range(3)]
            spent = sum(u.spent for u in usages if u is not None)  # a refused run spent nothing
            print(f"{name}: spent ${spent}; {results}")
            assert spent == expected[name], (name, spent)
            rt.close()
        # acme paid its rate for two calls (the third was over its limit); globex its own for three.


if __name__ == "__main__":
    main()
