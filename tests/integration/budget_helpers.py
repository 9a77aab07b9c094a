"""What the scripted server billed, and what wflo recorded, for the budget tests of threads, lost calls and races."""

from __future__ import annotations

import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices

from wflo import _config
from wflo.testing import LLMServer, Reply

HERE = Path(__file__).parent
ANSWER = Reply("alpha beta gamma delta epsilon zeta eta theta")


def price(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        model_ref=model,
        provider_id="openai",
    )
    return Decimal(calc.total_price)


def billed(llm: LLMServer) -> Decimal:
    """What the server billed, at list price, for every request it answered (as it reported usage)."""
    return sum((price(b["model"], b["input_tokens"], b["output_tokens"]) for b in list(llm.billed)), Decimal(0))


def llm_events(run_id: str, types: tuple[str, ...] = ("call.completed", "call.failed")) -> list[dict[str, Any]]:
    return [e.data for e in _config.get_store().events(run_id) if e.type in types and e.data.get("kind") == "llm"]


def subprocess_env(store_url: str, llm: LLMServer | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": store_url, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]), **extra})
    if llm is not None:
        env["LLMAPP_BASE"] = llm.url
    return env
