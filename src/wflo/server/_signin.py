"""Sign-in state every server process shares through the store, so that any number of them
run behind a load balancer with no sticky routing (issue 17).

- ``PendingLogins``: an OIDC sign-in between the redirect to the provider and the callback,
  which may land on another process. Keyed by the SHA-256 digest of ``state`` (the raw value,
  a bearer-like secret in the browser's cookie, is never stored); taken once, atomically.
- ``RateLimiter``: failed attempts per client address, counted once for all processes, so N
  processes do not allow N times the guesses.

Times are on the store's clock (PostgreSQL's ``clock_timestamp()``; the machine's clock for an
embedded SQLite store), never on each process's own.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..store import Store

# Epoch seconds on the store's clock, read in the statement itself (one round trip per check).
_EPOCH = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


def _digest(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PendingLogin:
    nonce: str
    verifier: str
    next: str
    created: str
    """When the sign-in started, on the store's clock."""


class PendingLogins:
    """Logins between the redirect to the provider and the callback (10 minutes at most).

    Kept in the store, keyed by the digest of ``state``; the browser also holds ``state`` in a
    cookie, so a callback carrying someone else's code (login CSRF) does not match. ``take``
    deletes the row and returns it in one write transaction: when the same callback reaches
    two processes at once, exactly one of them gets the login.
    """

    ttl = 600.0

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, next_path: str) -> tuple[str, PendingLogin]:
        state = secrets.token_urlsafe(24)
        nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        st = self.store

        def go(cur: Any) -> PendingLogin:
            now = st.now(cur=cur)
            st.execute(cur, "DELETE FROM signin_pending WHERE expires_at <= ?", (now,))  # the abandoned ones
            st.execute(
                cur, "INSERT INTO signin_pending (digest, nonce, verifier, next_path, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (_digest(state), nonce, verifier, next_path, now, st.now(self.ttl, cur=cur)),
            )  # fmt: skip
            return PendingLogin(nonce, verifier, next_path, now)

        return state, st.write(go)

    def take(self, state: str) -> PendingLogin | None:
        """The login started with ``state``, once; None if unknown, taken already or expired."""
        st = self.store

        def go(cur: Any) -> PendingLogin | None:
            st.execute(
                cur, "DELETE FROM signin_pending WHERE digest = ? "
                "RETURNING nonce, verifier, next_path, created_at, expires_at",
                (_digest(state),),
            )  # fmt: skip
            row = cur.fetchone()
            if row is None or str(row[4]) <= st.now(cur=cur):
                return None
            return PendingLogin(str(row[0]), str(row[1]), str(row[2]), str(row[3]))

        return st.write(go)


class RateLimiter:
    """At most ``limit`` attempts per ``window`` seconds per key (a client address), counted in
    the store for every server process.

    A sliding log: one row per counted attempt, so the limit holds over any ``window`` seconds,
    not per calendar minute. ``blocked`` is one indexed read; ``hit`` one insert. ``allow``
    checks and counts in one statement in one write transaction (serialised per key on
    PostgreSQL), so concurrent attempts cannot all slip under the limit. ``blocked`` then
    ``hit`` (the bearer-token path: only failures count) may let requests already in flight
    through together, as they were before.
    """

    sweep_every = 60.0
    """Seconds between one process's deletions of old rows."""

    def __init__(self, store: Store, limit: int = 20, window: float = 60.0) -> None:
        self.store, self.limit, self.window = store, limit, window
        self._now = _EPOCH.get(store.dialect, _EPOCH["sqlite"])
        self._swept = 0.0
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count an attempt; False when the key is over its limit (the attempt is refused)."""
        st, now = self.store, self._now

        def go(cur: Any) -> bool:
            if st.dialect == "postgresql":  # SQLite's write transaction is serialised already
                st.execute(cur, "SELECT pg_advisory_xact_lock(hashtextextended(?, 17))", ("wflo.rate:" + key,))
            st.execute(
                cur, f"INSERT INTO signin_attempts (key, at) SELECT ?, {now} WHERE "
                f"(SELECT COUNT(*) FROM signin_attempts WHERE key = ? AND at > {now} - ?) < ?",
                (key, key, self.window, self.limit),
            )  # fmt: skip
            return int(cur.rowcount) == 1

        allowed = st.write(go)
        self._sweep()
        return allowed

    def blocked(self, key: str) -> bool:
        rows = self.store.read(
            f"SELECT COUNT(*) FROM signin_attempts WHERE key = ? AND at > {self._now} - ?", (key, self.window)
        )
        return int(rows[0][0]) >= self.limit

    def hit(self, key: str) -> None:
        """Count a (failed) attempt."""
        sql = f"INSERT INTO signin_attempts (key, at) VALUES (?, {self._now})"
        self.store.write(lambda cur: self.store.execute(cur, sql, (key,)))
        self._sweep()

    def _sweep(self) -> None:
        # Rows past any window in use; at most once a minute per process, off the hot read path.
        with self._lock:
            if time.monotonic() - self._swept < self.sweep_every:
                return
            self._swept = time.monotonic()
        sql, horizon = f"DELETE FROM signin_attempts WHERE at < {self._now} - ?", max(self.window, 3600.0)
        self.store.write(lambda cur: self.store.execute(cur, sql, (horizon,)))
