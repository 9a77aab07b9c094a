"""A tool that needs approval, for the crash test of a run resumed after the decision.

Usage: python approvalapp.py RUN_ID EFFECTS_FILE   (store from WFLO_DATABASE_URL)

The script runs ``pay`` and, when it reaches the approval, waits for the decision in the same
process (as ``run`` does), then goes on. ``transfer`` logs ``start``/``end`` lines with the
arguments it ran with, and takes a while, so that a kill can land inside it.
"""

from __future__ import annotations

import os
import random
import sys
import time

import wflo

EFFECTS = os.environ.get("APPROVALAPP_EFFECTS", "effects.log")


def _log(line: str) -> None:
    fd = os.open(EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line} {os.getpid()}\n".encode())  # one O_APPEND write: lines never mix
    finally:
        os.close(fd)


@wflo.tool(name="approvalapp_transfer", approval=wflo.Approval(approvers=["role:finance"]))
def transfer(order: str, amount: float) -> str:
    _log(f"start {order} {amount}")
    time.sleep(random.uniform(0.05, 0.25))
    _log(f"end {order} {amount}")
    return f"sent {amount} for {order}"


@wflo.step(name="approvalapp.receipt")
def receipt(sent: str) -> str:
    _log("receipt - -")
    return sent + " (receipt)"


@wflo.workflow(name="approvalapp.pay")
def pay(order: str, amount: float) -> str:
    return receipt(transfer(order, amount))


if __name__ == "__main__":
    run_id, EFFECTS = sys.argv[1], sys.argv[2]
    os.environ["APPROVALAPP_EFFECTS"] = EFFECTS
    print(pay.options(id=run_id).run("A-17", 250.0))
