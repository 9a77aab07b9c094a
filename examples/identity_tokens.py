"""Identity and access in one minute: the first admin, a scoped API token, the server refusing
what the token's role does not allow, and the sock-puppet attack failing at the grant step.

Needs wflo[server]; runs offline in a few seconds: python examples/identity_tokens.py
"""

from __future__ import annotations

import sys
import tempfile

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError:
    print("examples/identity_tokens.py needs the server extra: pip install 'wflo[server]'")
    sys.exit(0)

import httpx

import wflo
from wflo import auth
from wflo.server import create_app, serve_in_thread


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="wflo-identity-") as work:
        wflo.configure(database=f"sqlite:///{work}/wflo.db", principal="user:ops")
        acc = auth.access()
        acc.bootstrap("user:ops", who=acc.local())
        print("admin: user:ops (wflo admin bootstrap)")

        _, operator = auth.tokens().create("ci", "operator", "tenant:acme", expires="1d", who=acc.local())
        _, admin = auth.tokens().create("provisioner", "admin", "tenant:acme", expires="1d", who=acc.local())
        print(f"tokens: ci (operator on tenant:acme) {operator[:13]}…, provisioner (admin on tenant:acme)")

        with serve_in_thread(create_app()) as base:

            def call(token: str, method: str, path: str, body: dict[str, str] | None = None) -> str:
                resp = httpx.request(method, base + path, json=body, headers={"Authorization": f"Bearer {token}"})
                return f"{resp.status_code} {resp.json() if resp.status_code < 300 else resp.json()['detail']}"

            print("GET /api/v1/me as ci:                ", call(operator, "GET", "/api/v1/me"))
            grant = {"principal": "user:ann", "role": "approver", "scope": "tenant:acme"}
            print("POST /api/v1/grants as ci:           ", call(operator, "POST", "/api/v1/grants", grant))
            print("POST /api/v1/grants as provisioner:  ", call(admin, "POST", "/api/v1/grants", grant)[:60])
            outside = {**grant, "scope": "tenant:globex"}
            print("... in another tenant:               ", call(admin, "POST", "/api/v1/grants", outside))

            try:
                acc.grant("user:sock1", "finance", who=acc.local("user:mallory"))
            except auth.AccessDeniedError as err:
                print(f"sock puppet: refused: {err}")
            refused = [e for e in acc.store.events("system") if e.type == "access.refused"]
            print(f"on the system chain: {len(refused)} access.refused events, e.g. {refused[-1].data}")


if __name__ == "__main__":
    main()
