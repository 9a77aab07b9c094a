"""The OpenAPI 3.1 document is generated and checked in (docs/openapi.json), and every error the
API answers has one shape: ``{"error": {"code", "message"}}`` (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from wflo.auth import access, tokens
from wflo.server import create_app
from wflo.server._openapi import render

DOC = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
REGENERATE = "python -m wflo.server._openapi > docs/openapi.json"


def test_checked_in_document_is_current() -> None:
    fresh = render()
    assert DOC.exists(), f"docs/openapi.json is missing: {REGENERATE}"
    assert DOC.read_text() == fresh, f"docs/openapi.json is out of date; regenerate it: {REGENERATE}"
    doc = json.loads(fresh)
    assert doc["openapi"].startswith("3.1")
    # Every API operation says which permission it needs; every change takes an Idempotency-Key.
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "x-wflo-permission" in op, (method, path)
            if path.startswith("/api/v1/") and method in ("post", "put", "patch", "delete"):
                assert any(p["name"] == "Idempotency-Key" for p in op.get("parameters", [])), (method, path)


@pytest.fixture
def app(configured: str) -> FastAPI:
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    return create_app()


def test_the_served_document_is_the_same(app: FastAPI) -> None:
    served = TestClient(app).get("/openapi.json").json()
    assert json.dumps(served, sort_keys=True) == json.dumps(json.loads(DOC.read_text()), sort_keys=True)


def test_every_error_has_code_and_message(app: FastAPI) -> None:
    client = TestClient(app)
    viewer = {"Authorization": "Bearer " + tokens().create("v", "viewer", who=access().local("user:root"))[1]}
    admin = {"Authorization": "Bearer " + tokens().create("a", "admin", who=access().local("user:root"))[1]}
    cases = {
        "unauthenticated": client.get("/api/v1/me"),
        "forbidden": client.get("/api/v1/users", headers=viewer),
        "not_found": client.get("/api/v1/nothing-here", headers=admin),
        "invalid_request": client.post("/api/v1/tokens", json={"role": "viewer"}, headers=admin),
        "user_error": client.post("/api/v1/tokens", json={"name": "x", "role": "wizard"}, headers=admin),
        "method_not_allowed": client.delete("/api/v1/users", headers=admin),
    }
    for code, resp in cases.items():
        body = resp.json()
        assert body["error"]["code"] == code, (code, resp.status_code, body)
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    # FastAPI's own ``detail`` stays beside it, and a missing field is named in the message.
    assert "name" in cases["invalid_request"].json()["error"]["message"]
    assert cases["forbidden"].json()["detail"] == cases["forbidden"].json()["error"]["message"]
    assert cases["unauthenticated"].headers["www-authenticate"] == "Bearer"
