"""The runs API in one minute: list runs with a filter, read one with its typed timeline, watch
a run live over server-sent events, cancel it, and retry a failed run, as an operator token.

Needs wflo[server]; runs offline in a few seconds: python examples/runs_api.py
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import threading
from collections.abc import Callable

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError:
    print("examples/runs_api.py needs the server extra: pip install 'wflo[server]'")
    sys.exit(0)

import httpx

import wflo
from wflo import auth
from wflo.server import create_app, serve_in_thread

gate = threading.Event()


@wflo.step
def lookup(order: str) -> str:
    return f"order {order}: shipped"


@wflo.workflow(name="support.answer")
def answer(order: str) -> str:
    status = lookup(order)
    gate.wait(10)  # holds the run open so the stream below has something to watch
    return lookup(status)


@wflo.workflow(name="support.refund")
def refund(order: str) -> str:
    raise ValueError(f"order {order} is not refundable")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="wflo-runs-") as work:
        wflo.configure(database=f"sqlite:///{work}/wflo.db", principal="user:ops")
        acc = auth.access()
        acc.bootstrap("user:ops", who=acc.local())
        _, token = auth.tokens().create("oncall", "operator", "tenant:acme", expires="1d", who=acc.local())
        headers = {"Authorization": f"Bearer {token}"}

        with contextlib.suppress(ValueError):  # a run that fails: recorded as failed
            refund.options(tenant="acme").run("A-1")
        live = threading.Thread(target=lambda: _quietly(answer.options(id="live-1", tenant="acme").run, "A-2"))
        live.start()

        with serve_in_thread(create_app()) as base:
            api = httpx.Client(base_url=base + "/api/v1", headers=headers, timeout=10)

            failed = api.get("/runs", params={"tenant": "acme", "status": "failed"}).json()["items"]
            print("failed runs:", [(r["workflow"], r["error"]["message"]) for r in failed])
            print("without ?tenant= (needs a global grant):", api.get("/runs").status_code)

            with api.stream("GET", "/stream", params={"run": "live-1", "after": 0}) as stream:
                seen = 0
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        msg = json.loads(line[5:])
                        if msg["kind"] == "event":
                            print(f"  live: #{msg['event']['seq']} {msg['event']['kind']:5} {msg['event']['title']}")
                            seen += 1
                            if seen == 3:
                                print("cancel:", api.post("/runs/live-1/cancel").json())
                                gate.set()  # the run reaches its next step boundary and stops there
                        if msg["kind"] == "end":
                            break
            live.join(10)
            run = api.get("/runs/live-1").json()
            print(f"live-1 is {run['status']}; chain verifies: {run['verify']['ok']} ({run['verify']['count']} events)")

            again = api.post(f"/runs/{failed[0]['id']}/retry", headers={"Idempotency-Key": "retry-A-1"}).json()
            print(f"retry: new run {again['id'][:13]}… ({again['status']}, retry_of {again['retry_of'][:13]}…)")


def _quietly(fn: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(BaseException):  # the cancellation ends the run here
        fn(*args)


if __name__ == "__main__":
    main()
