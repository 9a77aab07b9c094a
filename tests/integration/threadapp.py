"""Workflows whose LLM calls come from thread pools, for the kill -9 and race tests (run in subprocesses)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import threading

import openai

import wflo

BASE = os.environ.get("LLMAPP_BASE", "http://127.0.0.1:1")
NO_LOOP_STOP = wflo.LoopGuard(max_repeats=None, max_same_error=None, max_steps=None)


def ask(prompt: str, *, n: int | None = None, stream: bool = False, responses: bool = False) -> str:
    client = openai.OpenAI(base_url=BASE + "/v1", api_key="test", max_retries=0)
    try:
        if responses:
            return client.responses.create(model="gpt-4o-mini", input=prompt, max_output_tokens=60).output_text
        extra = {"n": n} if n else {}
        if stream:
            chunks = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], max_tokens=60, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], max_tokens=60, **extra
        )
        return reply.choices[0].message.content or ""
    finally:
        client.close()


@wflo.workflow(name="pool-calls", budget=wflo.Budget(usd="1"), guards=NO_LOOP_STOP)
def pool_calls(count: int) -> list[str]:
    """Each prompt submitted to a pool: one lane per task."""
    with cf.ThreadPoolExecutor(4) as pool:
        return list(pool.map(ask, [f"prompt {i}" for i in range(count)]))


@wflo.workflow(name="queue-calls", budget=wflo.Budget(usd="1"), guards=NO_LOOP_STOP)
def queue_calls(count: int) -> dict[str, str]:
    """Four threads pull prompts from one queue: which thread gets which prompt is luck, so
    replay must match the calls by content."""
    work: queue.Queue[str] = queue.Queue()
    for i in range(count):
        work.put(f"prompt {i}")
    answers: dict[str, str] = {}
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                prompt = work.get_nowait()
            except queue.Empty:
                return
            answer = ask(prompt)
            with lock:
                answers[prompt] = answer

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


@wflo.workflow(name="race-calls", guards=NO_LOOP_STOP, budget=wflo.Budget(usd="0.00025"))
def race_calls(proc: int, threads: int, calls: int) -> dict[str, int]:
    """The race test's worker: ``threads`` threads, half of them plain threads and half pool
    tasks, each making ``calls`` calls under the tenant ``race`` (chat, chat ``n=2``, chat
    streamed, responses)."""
    stats = {"ok": 0, "refused": 0}
    lock = threading.Lock()

    def one(tid: int) -> None:
        with wflo.scope(tenant="race"):
            for i in range(calls):
                kind = (tid + i) % 4
                try:
                    ask(f"p{proc} t{tid} c{i} " * 5, n=2 if kind == 1 else None, stream=kind == 2, responses=kind == 3)
                    with lock:
                        stats["ok"] += 1
                except wflo.BudgetExceededError:
                    with lock:
                        stats["refused"] += 1

    plain = [threading.Thread(target=one, args=(t,)) for t in range(threads // 2)]
    for t in plain:
        t.start()
    with cf.ThreadPoolExecutor(threads - threads // 2) as pool:
        list(pool.map(one, range(threads // 2, threads)))
    for t in plain:
        t.join()
    return stats


@wflo.workflow(name="one-call", budget=wflo.Budget(usd="1"))
def one_call() -> str:
    return ask("the one question")
