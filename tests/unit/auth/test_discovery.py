"""Discovery documents shaped like Keycloak's, Entra ID's and Okta's, served over real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from wflo._errors import ConfigurationError
from wflo.server._oidc import Provider

ISSUER_PATHS = {"keycloak": "/realms/acme", "entra": "/0b5e-tenant/v2.0", "okta": "/oauth2/default"}


def _doc(base: str, style: str) -> dict[str, Any]:
    issuer = base + ISSUER_PATHS[style]
    endpoints = {
        "keycloak": (
            "/protocol/openid-connect/auth",
            "/protocol/openid-connect/token",
            "/protocol/openid-connect/certs",
        ),
        "entra": ("/oauth2/v2.0/authorize", "/oauth2/v2.0/token", "/discovery/v2.0/keys"),
        "okta": ("/v1/authorize", "/v1/token", "/v1/keys"),
    }[style]
    root = issuer.removesuffix("/v2.0") if style == "entra" else issuer
    return {
        "issuer": issuer, "authorization_endpoint": root + endpoints[0], "token_endpoint": root + endpoints[1],
        "jwks_uri": root + endpoints[2], "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"], "id_token_signing_alg_values_supported": ["RS256"],
    }  # fmt: skip


@pytest.fixture
def idp() -> Iterator[str]:
    docs: dict[str, dict[str, Any]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = docs.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body or {}).encode())

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{srv.server_port}"
    for style, path in ISSUER_PATHS.items():
        docs[path + "/.well-known/openid-configuration"] = _doc(base, style)
    # Entra's multi-tenant endpoint: its issuer is a template, not the URL it is served from.
    docs["/common/v2.0/.well-known/openid-configuration"] = {
        **_doc(base, "entra"),
        "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
    }
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield base
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("style", sorted(ISSUER_PATHS))
def test_each_style_of_discovery_document(idp: str, style: str) -> None:
    p = Provider(idp + ISSUER_PATHS[style], "wflo")
    url = urlparse(p.authorize_url("https://wflo.example/auth/callback", "st", "no", "v" * 43))
    assert f"{url.scheme}://{url.netloc}{url.path}" == _doc(idp, style)["authorization_endpoint"]
    query = parse_qs(url.query)
    assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == [
        "https://wflo.example/auth/callback"
    ]


def test_a_discovery_document_naming_another_issuer_is_refused(idp: str) -> None:
    with pytest.raises(ConfigurationError, match="names another issuer"):
        Provider(idp + "/common/v2.0", "wflo").meta()
    with pytest.raises(ConfigurationError, match="cannot read the OIDC discovery document"):
        Provider(idp + "/nowhere", "wflo").meta()
