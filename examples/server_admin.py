"""The server's first start and its operations API in one minute: the one-time admin sign-in
link, a token created with an Idempotency-Key (a retry gets the same token, not a second one),
the workers view (an idle worker is listed too), and the error shape.

Needs wflo[server]; runs offline in a few seconds: python examples/server_admin.py
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
    print("examples/server_admin.py needs the server extra: pip install 'wflo[server]'")
    sys.exit(0)

import httpx

import wflo
from wflo import auth
from wflo.engine import Worker
from wflo.server import FIRST_SIGNIN_PATH as PATH
from wflo.server import FirstSignIn, create_app, serve_in_thread


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="wflo-server-") as work:
        wflo.configure(database=f"sqlite:///{work}/wflo.db", cookie_secure=False)
        app = create_app()
        # What `wflo server --admin user:ops` prints on a store without an admin:
        code = FirstSignIn(auth.access()).issue("user:ops")
        with serve_in_thread(app) as base:
            print(f"first start: {base}{PATH}?code={str(code)[:8]}…")

            with httpx.Client(base_url=base) as browser:
                signed = browser.post(PATH, data={"code": code})
                print("sign in with the link:     ", signed.status_code, "->", signed.headers["location"])
                print("the same link again:       ", httpx.post(base + PATH, data={"code": code}).status_code)
                csrf = {"X-CSRF-Token": browser.cookies["wflo_csrf"], "Idempotency-Key": "create-ci-token-1"}
                body = {"name": "ci", "role": "operator", "expires": "1d"}
                first = browser.post("/api/v1/tokens", json=body, headers=csrf)
                retry = browser.post("/api/v1/tokens", json=body, headers=csrf)
                print("create a token:            ", first.status_code, first.json()["prefix"])
                print("retry with the same key:   ", retry.status_code, retry.json()["prefix"],
                      "replayed:", retry.headers.get("Idempotent-Replayed"))  # fmt: skip
                other = browser.post("/api/v1/tokens", json={**body, "name": "other"}, headers=csrf)
                print("same key, other request:   ", other.status_code, other.json()["error"]["code"])
                token = first.json()["token"]

            api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
            idle = Worker(concurrency=2, workflows=["nightly-report"])  # nothing queued: it stays idle
            serving = threading.Thread(target=idle.run)
            serving.start()
            deadline = time.monotonic() + 10
            while not (listed := api.get("/api/v1/workers").json()["workers"]) and time.monotonic() < deadline:
                time.sleep(0.05)  # until the worker has written its registry row
            print("workers (as the token):    ",
                  [(w["id"], "busy" if w["leases"] else "idle", w["concurrency"]) for w in listed])  # fmt: skip
            idle.stop()
            serving.join()
            print("people (operator may not): ", api.get("/api/v1/users").json()["error"])
            print("health:                    ", httpx.get(base + "/healthz").json())
            tokens = [t.name for t in auth.tokens().list()]
            print("tokens in the store:       ", tokens)


if __name__ == "__main__":
    main()
