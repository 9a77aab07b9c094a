"""A budgeted workflow of sequential LLM calls through the real ``openai`` SDK, for the crash
test of paying: each call's answer is a short step away from the next call.

Usage: python llmkillapp.py RUN_ID CALLS   (store from WFLO_DATABASE_URL, server from LLMKILL_BASE)

Prints the number of answers the run got (``_killloop.kill_then_finish`` reads it).
"""

from __future__ import annotations

import os
import sys

import openai

import wflo


@wflo.step(name="llmkillapp.note")
def note(i: int, answer: str) -> int:
    return len(answer)


@wflo.workflow(name="llmkillapp", budget=wflo.Budget(usd="1"), guards=False)
def llmkillapp(calls: int) -> int:
    client = openai.OpenAI(base_url=os.environ["LLMKILL_BASE"], api_key="test", max_retries=0)
    got = 0
    for i in range(calls):
        reply = client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=40, messages=[{"role": "user", "content": f"question {i}"}]
        )
        note(i, reply.choices[0].message.content or "")
        got += 1
    return got


if __name__ == "__main__":
    run_id, calls = sys.argv[1], int(sys.argv[2])
    print(llmkillapp.options(id=run_id).run(calls))
