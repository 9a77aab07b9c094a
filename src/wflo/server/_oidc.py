"""OpenID Connect sign-in: authorization code flow with PKCE, ID token checks by joserfc.

Discovery, the authorization request (``state``, ``nonce``, S256 ``code_challenge``), the code
exchange and the ID token checks: the signature against the provider's JWKS, ``iss`` equal to
the configured issuer, our client id in ``aud`` (and ``azp`` when several audiences), ``exp``
and ``iat``, and the ``nonce`` we sent. No cryptography is written here; joserfc verifies.
The ID token itself is never stored or logged: only the claims we use.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..errors import AuthenticationError, ConfigurationError


@dataclass
class Provider:
    """One OIDC provider: discovery document and signing keys, fetched once and cached."""

    issuer: str
    client_id: str
    client_secret: str = field(repr=False, default="")
    _meta: dict[str, Any] | None = None
    _keys: KeySet | None = None

    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                resp = httpx.get(url, timeout=10)
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                raise ConfigurationError(f"cannot read the OIDC discovery document {url}: {exc}") from None
            meta: dict[str, Any] = resp.json()
            if meta.get("issuer", "").rstrip("/") != self.issuer.rstrip("/"):
                raise ConfigurationError(f"the provider at {url} names another issuer: {meta.get('issuer')!r}")
            self._meta = meta
        return self._meta

    def keys(self, refresh: bool = False) -> KeySet:
        if self._keys is None or refresh:
            resp = httpx.get(self.meta()["jwks_uri"], timeout=10)
            resp.raise_for_status()
            self._keys = KeySet.import_key_set(resp.json())
        return self._keys

    def authorize_url(self, redirect_uri: str, state: str, nonce: str, verifier: str) -> str:
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = {
            "response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri,
            "scope": "openid email profile", "state": state, "nonce": nonce,
            "code_challenge": challenge, "code_challenge_method": "S256",
        }  # fmt: skip
        return f"{self.meta()['authorization_endpoint']}?{urlencode(query)}"

    def exchange(self, code: str, redirect_uri: str, verifier: str) -> str:
        """The ID token for an authorization code (never stored)."""
        data = {
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier, "client_id": self.client_id,
        }  # fmt: skip
        try:
            resp = httpx.post(
                self.meta()["token_endpoint"], data=data, auth=(self.client_id, self.client_secret), timeout=10
            )
        except httpx.HTTPError as exc:
            raise AuthenticationError(detail=f"token endpoint unreachable: {type(exc).__name__}") from None
        if resp.status_code != 200 or "id_token" not in resp.json():
            raise AuthenticationError(detail=f"the provider refused the code (HTTP {resp.status_code})")
        return str(resp.json()["id_token"])

    def verify(self, id_token: str, nonce: str | None, *, leeway: int = 60) -> dict[str, Any]:
        """The claims of a valid ID token for us; ``AuthenticationError`` for anything else."""
        try:
            try:
                token = jwt.decode(id_token, self.keys())
            except JoseError:
                token = jwt.decode(id_token, self.keys(refresh=True))  # the provider rotated its keys
        except (JoseError, ValueError) as exc:
            raise AuthenticationError(detail=f"ID token refused: {type(exc).__name__}") from None
        claims = dict(token.claims)
        now = time.time()
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        problems = [
            (claims.get("iss", "").rstrip("/") != self.issuer.rstrip("/"), "wrong issuer"),
            (self.client_id not in auds, "issued for another audience"),
            (len(auds) > 1 and claims.get("azp") != self.client_id, "issued for another party (azp)"),
            (not isinstance(claims.get("exp"), int | float) or claims["exp"] < now - leeway, "expired"),
            (isinstance(claims.get("iat"), int | float) and claims["iat"] > now + leeway, "issued in the future"),
            (nonce is not None and not secrets.compare_digest(str(claims.get("nonce", "")), nonce), "nonce mismatch"),
            (not claims.get("sub"), "no subject"),
        ]
        for bad, why in problems:
            if bad:
                raise AuthenticationError(detail=f"ID token refused: {why}")
        return claims


class QueryRedactor(logging.Filter):
    """Drop query strings from access-log lines: a sign-in callback's URL carries the
    authorization code and state, which must not reach the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(a.split("?", 1)[0] if isinstance(a, str) and "?" in a else a for a in record.args)
        return True
