"""``Idempotency-Key``: a retried POST/PUT/PATCH/DELETE under ``/api/v1`` is answered once.

A client that sends ``Idempotency-Key: <anything unique>`` with a state-changing request may
send the same request again (a timeout, a dropped connection) without doing the thing twice:

- the first request *claims* the key for its principal (a row in ``idempotency_keys`` with the
  request's fingerprint: method, path with query, SHA-256 of the body) and runs;
- its answer (status, body) is kept with the key for 24 hours; a retry with the same key and
  the same request gets that answer again, with the header ``Idempotent-Replayed: true``;
- the same key with a different request is the client's mistake: 422;
- a retry that arrives while the first is still running gets 409 (try again shortly): the
  claim is one ``INSERT … ON CONFLICT DO NOTHING`` in a write transaction, so of two processes
  or threads racing, exactly one runs the request, on SQLite and on PostgreSQL;
- a request that failed on the server's side (5xx, or an exception) gives its key back, so the
  retry runs; a claim left by a crashed server is taken over after ``ABANDONED`` seconds.

The check runs in ``Router.route``'s dependency (after authentication: keys are per principal)
and the answer is captured by ``IdempotencyMiddleware``, which ``Router`` installs: no endpoint
can forget it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..store import Store, now_iso

HEADER = "idempotency-key"
REPLAYED = "Idempotent-Replayed"
TTL = 24 * 3600.0
"""How long an answer is kept (seconds)."""
ABANDONED = 600.0
"""A claim still running after this long is taken to be left by a crashed server (seconds)."""
METHODS = ("POST", "PUT", "PATCH", "DELETE")
OPENAPI_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
    "description": "Makes a retry safe: the same key and request within 24 h get the first answer again "
    "(header Idempotent-Replayed: true); the same key with another request is 422; while the first runs, 409.",
}  # fmt: skip
_STATE = "wflo_idempotency"
MAX_KEPT = 1 << 20
"""The largest answer kept whole (bytes); a larger one is kept as a 409 that says what happened."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Claim:
    principal: str
    key: str


class Replay(Exception):
    """Raised by the route check to answer with a stored response (handled in ``Router``)."""

    def __init__(self, status: int, body: str, content_type: str) -> None:
        super().__init__(status)
        self.status, self.body, self.content_type = status, body, content_type

    def response(self) -> Response:
        return Response(self.body, self.status, media_type=self.content_type, headers={REPLAYED: "true"})


class IdempotencyKeys:
    """The ``idempotency_keys`` table: claim, finish, give back."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def claim(self, principal: str, key: str, fingerprint: str) -> Replay | None:
        """Claim ``key`` for this request: ``None`` (go ahead) or the stored answer.

        Raises ``HTTPException`` 422 (the key was used for another request) or 409 (the first
        request with this key is still running).
        """
        st = self.store
        now = now_iso()
        stale = now_iso(-ABANDONED)

        def op(cur: Any) -> tuple[bool, tuple[Any, ...] | None]:
            # Expired answers and abandoned claims go first (this key's, and a few others').
            st.execute(
                cur,
                "DELETE FROM idempotency_keys WHERE principal = ? AND key = ? AND "
                "(expires_at < ? OR (status IS NULL AND created_at < ?))",
                (principal, key, now, stale),
            )
            st.execute(cur, "DELETE FROM idempotency_keys WHERE expires_at < ?", (now,))
            st.execute(
                cur,
                "INSERT INTO idempotency_keys (principal, key, fingerprint, status, body, content_type, created_at, "
                "expires_at) VALUES (?, ?, ?, NULL, NULL, NULL, ?, ?) ON CONFLICT (principal, key) DO NOTHING",
                (principal, key, fingerprint, now, now_iso(TTL)),
            )
            if cur.rowcount == 1:
                return True, None
            st.execute(
                cur,
                "SELECT fingerprint, status, body, content_type FROM idempotency_keys WHERE principal = ? AND key = ?",
                (principal, key),
            )
            return False, cur.fetchone()

        mine, row = st.write(op)
        if mine:
            return None
        if row is None:  # removed between our insert and read: only a racing give-back does that
            raise HTTPException(409, "a request with this Idempotency-Key is in progress; retry shortly")
        if row[0] != fingerprint:
            raise HTTPException(422, "this Idempotency-Key was used for a different request (method, path or body)")
        if row[1] is None:
            raise HTTPException(409, "a request with this Idempotency-Key is in progress; retry shortly")
        return Replay(int(row[1]), str(row[2] or ""), str(row[3] or "application/json"))

    def finish(self, claim: Claim, status: int, body: bytes, content_type: str) -> None:
        self.store.write(
            lambda cur: self.store.execute(
                cur,
                "UPDATE idempotency_keys SET status = ?, body = ?, content_type = ? WHERE principal = ? AND key = ?",
                (status, body.decode("utf-8", "replace"), content_type, claim.principal, claim.key),
            )
        )

    def give_back(self, claim: Claim) -> None:
        self.store.write(
            lambda cur: self.store.execute(
                cur,
                "DELETE FROM idempotency_keys WHERE principal = ? AND key = ? AND status IS NULL",
                (claim.principal, claim.key),
            )
        )


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    return hashlib.sha256(json.dumps([method, path, query, hashlib.sha256(body).hexdigest()]).encode()).hexdigest()


async def check(request: Request, keys: IdempotencyKeys, principal: str | None) -> None:
    """In a route's check, after authorization: claim the request's key (or answer from it)."""
    key = request.headers.get(HEADER)
    if key is None or request.method not in METHODS or not request.url.path.startswith("/api/v1/"):
        return
    if not 1 <= len(key) <= 255 or not (key.isascii() and key.isprintable()):
        raise HTTPException(400, "Idempotency-Key must be 1 to 255 printable ASCII characters")
    if principal is None:  # a public route: there is nobody to keep the answer for
        return
    try:
        body = await request.body()
    except RuntimeError:  # a form already parsed for its CSRF field: its fields stand for the body
        body = json.dumps(sorted((k, str(v)) for k, v in (await request.form()).multi_items())).encode()
    fp = fingerprint(request.method, request.url.path, request.url.query, body)
    replay = await run_in_threadpool(keys.claim, principal, key, fp)
    if replay is not None:
        raise replay
    request.state.__setattr__(_STATE, Claim(principal, key))


def _text(body: bytes) -> bool:
    try:
        return "\x00" not in body.decode("utf-8")
    except UnicodeDecodeError:
        return False


class IdempotencyMiddleware:
    """Keeps the answer of a request whose check claimed an ``Idempotency-Key``."""

    def __init__(self, app: ASGIApp, keys: IdempotencyKeys) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:  # fmt: skip
        if scope["type"] != "http" or scope["method"] not in METHODS:
            await self.app(scope, receive, send)
            return
        # The route's check and this middleware share ``scope["state"]`` (``request.state``).
        scope.setdefault("state", {})
        started: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                started["status"] = message["status"]
                started["type"] = next(
                    (v.decode() for k, v in message.get("headers", []) if k.lower() == b"content-type"),
                    "application/json",
                )
                # Only a request whose check claimed a key has its answer copied.
                started["size"] = 0 if _STATE in scope["state"] else MAX_KEPT + 1
            elif message["type"] == "http.response.body" and started["size"] <= MAX_KEPT:
                chunk = message.get("body", b"")
                started["size"] += len(chunk)
                chunks.append(chunk)
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            claim = scope["state"].get(_STATE)
            if claim is not None:
                await run_in_threadpool(self.keys.give_back, claim)
            raise
        claim = scope["state"].get(_STATE)
        if claim is None:
            return
        status = int(started.get("status", 500))
        if status >= 500:
            await run_in_threadpool(self.keys.give_back, claim)
            return
        body, kind = b"".join(chunks), started["type"]
        if len(body) > MAX_KEPT or not _text(body):
            # Too large to keep (or binary, as an export's ZIP: the store keeps text, and PostgreSQL
            # text no NUL), but done: a retry must not do it again, so it learns that instead.
            why = "too large to keep" if len(body) > MAX_KEPT else "not text, so not kept"
            message = f"the request with this Idempotency-Key was done (status {status}); its answer was {why}"
            body, status, kind = (
                json.dumps({"error": {"code": "conflict", "message": message}}).encode(),
                409,
                "application/json",
            )
        await run_in_threadpool(self.keys.finish, claim, status, body, kind)
