"""Device sign-in for the CLI (RFC 8628 style), brokered by the server and kept in the store.

``wflo login`` asks the server for a device request (``start``): a secret ``device_code``
for the CLI and a short ``user_code`` for the person, who opens the verification page in a
browser where they are signed in, compares the code and approves (``approve``) or denies
(``deny``). The CLI polls (``collect``) with its ``device_code`` until the answer is there.
Every server replica answers any of these: the request is a row in ``device_requests``.

What the store holds, and why a copy of the database gives nothing away:

- the SHA-256 digest of the ``device_code`` (the lookup key), never the code;
- an X25519 key pair made for the request: the public key in clear, the private key sealed
  (JWE ``dir``/A256GCM) under a key derived from the ``device_code`` (HMAC-SHA256, another
  derivation than the digest). The approval seals the new personal CLI token to the public key
  (JWE ``ECDH-ES``/A256GCM), so it is written encrypted although the approving process never
  sees the ``device_code``; only the poll that brings the code can open it. That poll deletes
  the sealed token in the same transaction: a token is collected once.

The approval creates the same personal CLI token as ``/auth/cli-token`` (``Tokens``), in the
transaction that marks the request approved, with ``token.created`` and
``auth.device_approved`` on the system chain; a denial records ``auth.device_denied``. No code
or token is written to the chain. joserfc (``wflo[server]``) does the cryptography.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from .._errors import UserError
from ..store import Migration, NewEvent, parse_iso
from ._access import Access, Principal
from ._tokens import Tokens
from ._tokens import digest as _digest

# The device requests of ``wflo login`` (RFC 8628 style): the device code's digest only, the
# request's key pair with its private half sealed under the device code, the approved token
# sealed to its public half until the one poll that collects it.
M027_DEVICE_REQUESTS = Migration(
    "m027_device_requests",
    """
CREATE TABLE IF NOT EXISTS device_requests (
    digest TEXT PRIMARY KEY,
    user_code TEXT NOT NULL,
    client TEXT NOT NULL,
    remote TEXT,
    public_key TEXT NOT NULL,
    sealed_key TEXT NOT NULL,
    status TEXT NOT NULL,
    principal TEXT,
    token_id TEXT,
    sealed_token TEXT,
    interval_s INTEGER NOT NULL,
    polled_at TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    decided_at TEXT
);
CREATE INDEX IF NOT EXISTS device_requests_user_code ON device_requests (user_code);
CREATE INDEX IF NOT EXISTS device_requests_expires ON device_requests (expires_at)
""",
)

ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
"""User codes use these 20 consonants (RFC 8628 §6.1): no vowels (no words), no 0/O or 1/I."""

_COLS = "user_code, client, remote, status, principal, created_at, expires_at, interval_s"
_KEEP_EXPIRED = 3600.0
"""Expired requests stay this long (a late poll hears ``expired_token``), then are deleted."""


def _normal(user_code: str) -> str:
    """``bcdf-ghjk`` and ``BCDF GHJK`` as ``BCDFGHJK``."""
    return "".join(ch for ch in (user_code or "").upper() if ch.isalnum())


def _show(user_code: str) -> str:
    """``BCDFGHJK`` as the person reads it: ``BCDF-GHJK``."""
    return f"{user_code[:4]}-{user_code[4:]}"


def _wrap_key(device_code: str) -> bytes:
    # Not the lookup digest (stored): a separate derivation, so the digest does not open the key.
    return hmac.new(device_code.encode(), b"wflo device request key", hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class DevicePoll:
    """The answer to one poll: the token, or an RFC 8628 ``error`` and its description."""

    token: str | None = field(default=None, repr=False)
    error: str | None = None
    """``authorization_pending``, ``slow_down``, ``access_denied``, ``expired_token``, or
    ``invalid_grant`` (an unknown or already collected device code)."""
    description: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """A device request as the verification page shows it (never its codes' secrets)."""

    user_code: str
    client: str
    """Who is asking, as the CLI described itself (host, program); not verified."""
    remote: str | None
    """The address the request came from."""
    status: str
    """``pending``, ``approved``, ``denied`` or ``collected``."""
    principal: str | None
    created_at: str
    expires_at: str
    interval: int

    @property
    def shown(self) -> str:
        """The user code as the person reads it: ``BCDF-GHJK``."""
        return _show(self.user_code)


@dataclass(frozen=True, slots=True)
class DeviceStart:
    """A new device request: what the CLI is told (``device_code`` is its secret)."""

    device_code: str = field(repr=False)
    user_code: str
    expires_in: int
    interval: int

    @property
    def shown(self) -> str:
        """The user code as the person reads it: ``BCDF-GHJK``."""
        return _show(self.user_code)


class DeviceRequests:
    """The device requests of one store (the server's ``/auth/device`` routes use them)."""

    def __init__(self, access: Access, *, ttl: int = 600, interval: int = 5) -> None:
        self.access, self.store = access, access.store
        self.tokens = Tokens(access)
        self.ttl = ttl
        """Seconds a request waits for its approval (and for its poll)."""
        self.interval = interval
        """Seconds the CLI waits between polls; a faster poll hears ``slow_down``."""

    def start(self, client: str, *, remote: str | None = None) -> DeviceStart:
        """A new request from ``client`` (free text, shown on the verification page)."""
        from joserfc import jwe
        from joserfc.jwk import OctKey, OKPKey

        device_code = secrets.token_urlsafe(32)
        pair = OKPKey.generate_key("X25519")
        sealed = jwe.encrypt_compact(
            {"alg": "dir", "enc": "A256GCM"}, json.dumps(pair.as_dict(private=True)).encode(),
            OctKey.import_key(_wrap_key(device_code)),
        )  # fmt: skip
        public = json.dumps(pair.as_dict(private=False))
        st = self.store
        client = " ".join((client or "unnamed client").split())[:200]

        def go(cur: Any) -> str:
            now = st.now(cur=cur)
            st.execute(cur, "DELETE FROM device_requests WHERE expires_at <= ?", (st.now(-_KEEP_EXPIRED, cur=cur),))
            while True:  # a clash among live codes is ~1 in 10^10; draw again
                code = "".join(secrets.choice(ALPHABET) for _ in range(8))
                st.execute(cur, "SELECT 1 FROM device_requests WHERE user_code = ?", (code,))
                if cur.fetchone() is None:
                    break
            st.execute(
                cur, "INSERT INTO device_requests (digest, user_code, client, remote, public_key, sealed_key, status, "
                "interval_s, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (_digest(device_code), code, client, remote, public, sealed, self.interval, now,
                 st.now(self.ttl, cur=cur)),
            )  # fmt: skip
            return code

        user_code = st.write(go)
        return DeviceStart(device_code, user_code, self.ttl, self.interval)

    def find(self, user_code: str) -> DeviceRequest | None:
        """The pending, unexpired request with this user code; None otherwise."""
        code = _normal(user_code)
        if len(code) != 8:
            return None
        rows = self.store.read(
            f"SELECT {_COLS} FROM device_requests WHERE user_code = ? AND status = 'pending' AND expires_at > ?",
            (code, self.store.now()),
        )
        return DeviceRequest(*rows[0]) if len(rows) == 1 else None

    def approve(self, user_code: str, who: Principal, *, remote: str | None = None) -> DeviceRequest:
        """Create ``who``'s personal CLI token and seal it to the request; ``UserError`` when the
        request is not pending any more (decided, expired, unknown)."""
        from joserfc import jwe
        from joserfc.jwk import OKPKey

        found = self._pending(user_code)
        info, secret, token_op, token_event = self.tokens._personal(who, remote=remote)
        rows = self.store.read(
            "SELECT public_key FROM device_requests WHERE user_code = ? AND status = 'pending'", (found.user_code,)
        )
        if not rows:
            raise UserError("this sign-in request was decided already or has expired")
        sealed = jwe.encrypt_compact(
            {"alg": "ECDH-ES", "enc": "A256GCM"}, secret.encode(), OKPKey.import_key(json.loads(rows[0][0]))
        )

        def op(cur: Any) -> None:
            self._decide(cur, found.user_code, "approved", who, token_id=info.id, sealed=sealed)

        event = NewEvent("auth.device_approved", self._event(found, who, remote) | {"token_id": info.id,
                                                                                     "prefix": info.prefix})  # fmt: skip
        self.store.append_system([token_event, event], ops=[token_op, op])
        return found

    def deny(self, user_code: str, who: Principal, *, remote: str | None = None) -> DeviceRequest:
        """Mark the request denied (its next poll hears ``access_denied``)."""
        found = self._pending(user_code)

        def op(cur: Any) -> None:
            self._decide(cur, found.user_code, "denied", who, token_id=None, sealed=None)

        self.store.append_system([NewEvent("auth.device_denied", self._event(found, who, remote))], ops=[op])
        return found

    def collect(self, device_code: str, *, remote: str | None = None) -> DevicePoll:
        """The token, once, for the request's ``device_code``; otherwise why not (``error``).
        An unknown or already collected code is recorded (``auth.failed``, never the code)."""
        from joserfc import jwe
        from joserfc.jwk import OctKey, OKPKey

        st = self.store
        want = _digest(device_code or "")

        def go(cur: Any) -> tuple[str, str] | str:
            st.execute(
                cur, "SELECT digest, status, sealed_key, sealed_token, interval_s, polled_at, expires_at "
                "FROM device_requests WHERE digest = ?", (want,),
            )  # fmt: skip
            row = cur.fetchone()
            if row is None or not hmac.compare_digest(str(row[0]), want) or row[1] == "collected":
                return "invalid_grant"
            now = st.now(cur=cur)
            if str(row[6]) <= now:
                return "expired_token"
            interval, polled = int(row[4]), row[5]
            if polled and (parse_iso(now) - parse_iso(str(polled))).total_seconds() < interval:
                # RFC 8628 §3.5: the client must wait 5 seconds more from now on.
                st.execute(
                    cur, "UPDATE device_requests SET interval_s = ?, polled_at = ? WHERE digest = ?",
                    (interval + 5, now, want),
                )  # fmt: skip
                return "slow_down"
            if row[1] != "approved":
                st.execute(cur, "UPDATE device_requests SET polled_at = ? WHERE digest = ?", (now, want))
                return "access_denied" if row[1] == "denied" else "authorization_pending"
            st.execute(
                cur, "UPDATE device_requests SET status = 'collected', sealed_token = NULL, sealed_key = '', "
                "polled_at = ? WHERE digest = ? AND status = 'approved'", (now, want),
            )  # fmt: skip
            return (str(row[2]), str(row[3])) if cur.rowcount == 1 else "invalid_grant"

        got = st.write(go)
        if isinstance(got, str):
            if got == "invalid_grant":
                data = {"via": "device", "reason": _DESCRIPTIONS[got], "remote": remote}
                st.append_system([NewEvent("auth.failed", data)])
            return DevicePoll(error=got, description=_DESCRIPTIONS[got])
        key = jwe.decrypt_compact(got[0], OctKey.import_key(_wrap_key(device_code))).plaintext
        token = jwe.decrypt_compact(got[1], OKPKey.import_key(json.loads(key or b"{}"))).plaintext
        return DevicePoll(token=(token or b"").decode())

    # ----------------------------------------------------------------- inside
    def wrong_code(self, who: Principal, *, remote: str | None = None) -> None:
        """Record a user code that names no pending request (``auth.failed``): guesses show."""
        self.access.record("auth.failed", who, remote=remote, reason="unknown or expired device sign-in code")

    def _pending(self, user_code: str) -> DeviceRequest:
        found = self.find(user_code)
        if found is None:
            raise UserError("no pending sign-in request with this code (it may have expired: run wflo login again)")
        return found

    def _decide(
        self, cur: Any, user_code: str, status: str, who: Principal, *, token_id: str | None, sealed: str | None
    ) -> None:
        st = self.store
        now = st.now(cur=cur)
        st.execute(
            cur, "UPDATE device_requests SET status = ?, principal = ?, token_id = ?, sealed_token = ?, "
            "decided_at = ? WHERE user_code = ? AND status = 'pending' AND expires_at > ?",
            (status, who.id, token_id, sealed, now, user_code, now),
        )  # fmt: skip
        if cur.rowcount != 1:  # decided or expired since the page was shown: nothing is written
            raise UserError("this sign-in request was decided already or has expired")

    @staticmethod
    def _event(found: DeviceRequest, who: Principal, remote: str | None) -> dict[str, Any]:
        return Access._who(who, remote) | {
            "user_code": found.shown, "client": found.client, "client_remote": found.remote,
        }  # fmt: skip


_DESCRIPTIONS = {
    "invalid_grant": "unknown or already collected device code",
    "expired_token": "the sign-in request expired: run wflo login again",
    "slow_down": "polling too fast: wait longer between polls",
    "access_denied": "the sign-in request was denied in the browser",
    "authorization_pending": "waiting for the person to approve in the browser",
}
