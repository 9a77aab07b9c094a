"""Deciding an approval over the REST API, as curl would: the inbox, the exact action and its
hash (the ETag), a stale decision refused with 412, the real one with If-Match, and the run
resuming; then what the run spent and the audit verdict.

Needs wflo[server]; runs offline in a few seconds: python examples/approve_over_api.py
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError:
    print("examples/approve_over_api.py needs the server extra: pip install 'wflo[server]'")
    sys.exit(0)

import httpx

import wflo
from wflo import auth
from wflo.server import create_app, serve_in_thread


@wflo.tool(approval=wflo.Approval(when=lambda amount, **_: amount > 100, approvers=["role:finance"]))
def refund(order_id: str, amount: float) -> str:
    return f"refunded {amount} on {order_id}"


@wflo.workflow(name="refunds")
def refunds(order_id: str, amount: float) -> str:
    return refund(order_id, amount)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="wflo-approve-") as work:
        wflo.configure(database=f"sqlite:///{work}/wflo.db", principal="user:ops", poll_interval=0.05)
        acc = auth.access()
        acc.bootstrap("user:ops", who=acc.local())
        acc.grant("service:fin-bot", "finance", "tenant:acme", who=acc.local())
        _, approver = auth.tokens().create("fin-bot", "approver", "tenant:acme", expires="1d", who=acc.local())
        _, auditor = auth.tokens().create("audit-bot", "auditor", "*", expires="1d", who=acc.local())

        # The agent asks as itself: whoever granted the approver's role may not be the requester.
        wflo.configure(database=f"sqlite:///{work}/wflo.db", principal="service:refund-agent", poll_interval=0.05)
        run = refunds.options(tenant="acme").start("A-1042", 480.0)
        worker = wflo.engine.Worker(concurrency=1)
        threading.Thread(target=worker.run, daemon=True).start()
        while run.status() != "waiting":
            time.sleep(0.05)
        print(f"run {run.id[:8]}: {run.status()} (a refund over $100 needs finance)")

        with serve_in_thread(create_app()) as base:
            api = httpx.Client(base_url=base + "/api/v1", headers={"Authorization": f"Bearer {approver}"})

            (item,) = api.get("/approvals", params={"mine": "true", "tenant": "acme"}).json()
            detail = api.get(f"/approvals/{item['id']}")
            assert detail.status_code == 200, detail.text
            print(f"inbox: {item['message']} requested by {item['requested_by']}")
            print(f"rule: {detail.json()['rule']['when']}; ETag {detail.headers['etag'][:18]}…")

            stale = api.post(
                f"/approvals/{item['id']}/decide", json={"decision": "approve"}, headers={"If-Match": '"00"'}
            )
            print(f"decide with a stale hash: {stale.status_code} {stale.json()['error']['code']}")
            ok = api.post(
                f"/approvals/{item['id']}/decide",
                json={"decision": "edit", "args": {"amount": 240.0}, "reason": "half now, half after the return"},
                headers={"If-Match": detail.headers["etag"]},
            )
            print(f"decide with If-Match: {ok.status_code} {ok.json()['status']} by {ok.json()['decided_by']}")
            print(f"run {run.id[:8]}: {run.result(timeout=10)}")

            audit = httpx.post(base + "/api/v1/audit/verify", json={},
                               headers={"Authorization": f"Bearer {auditor}"}).json()  # fmt: skip
            print(f"audit: {'intact' if audit['ok'] else 'BROKEN'}, {audit['chains']} chains, {audit['events']} events")
            worker.stop()


if __name__ == "__main__":
    main()
