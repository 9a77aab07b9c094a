"""The workflow the PostgreSQL chaos test drains: two logged steps around one budgeted LLM call.

Each step appends ``start``/``end`` lines (step, run index, pid, time) to ``CHAOS_EFFECTS``, so
the test can tell whether a step ever ran on two workers at once.
"""

from __future__ import annotations

import os
import time
from typing import Any

import openai

import wflo

_client: Any = None


def _log(kind: str, step: str, i: int) -> None:
    line = f"{kind} {step} {i} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(os.environ["CHAOS_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one O_APPEND write per line: lines of processes never mix
    finally:
        os.close(fd)


def _work(step: str, i: int) -> int:
    _log("start", step, i)
    time.sleep(float(os.environ.get("CHAOS_STEP_SECONDS", "0.01")))
    _log("end", step, i)
    return i


@wflo.step
def prepare(i: int) -> int:
    return _work("prepare", i)


@wflo.step
def settle(i: int) -> int:
    return _work("settle", i)


@wflo.workflow(name="chaosapp")
def chaosapp(i: int) -> int:
    global _client
    if _client is None:
        _client = openai.OpenAI(base_url=os.environ["CHAOS_LLM"], api_key="test", max_retries=5)
    a = prepare(i)
    _client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": f"run {i}"}]
    )
    return a + settle(i)
