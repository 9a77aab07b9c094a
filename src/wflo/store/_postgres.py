"""PostgreSQL backend: the scale-out store (many workers on many machines)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from .._errors import ConfigurationError, StoreUnavailableError
from ._base import Store

_CLAIM_NEXT = """
SELECT id FROM runs
WHERE (status = 'queued'
       OR (status = 'running' AND (lease_owner IS NULL OR lease_expires_at < ?))
       OR (status = 'waiting' AND lease_owner IS NULL AND wake_at IS NOT NULL AND wake_at <= ?))
  /*WORKFLOWS*/
ORDER BY created_at
LIMIT 1
FOR UPDATE SKIP LOCKED
"""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigurationError("the PostgreSQL store needs psycopg 3: pip install 'wflo[postgres]'") from None
    return psycopg


class PostgresStore(Store):
    """A store in a PostgreSQL database.

    Workers claim runs with ``FOR UPDATE SKIP LOCKED`` (no two take the same run, none waits
    for another) and wake on ``LISTEN wflo_runs`` instead of polling. A connection the server
    drops (restart, ``pg_terminate_backend``) is reopened and the operation retried; appends
    are fenced on the run's head, so a retried append can never write a link twice.
    """

    dialect = "postgresql"
    placeholder = "%s"
    for_update = " FOR UPDATE"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._psycopg = _psycopg()
        self._listen_conn: Any = None
        self._listen_lock = threading.Lock()

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailableError(url=_redact(self.url), detail=detail) from None

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN")

    def _claim_next_sql(self) -> str:
        return _CLAIM_NEXT

    def _is_disconnect(self, error: BaseException) -> bool:
        psycopg = self._psycopg
        if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
            return True
        conn = getattr(self._local, "conn", None)
        return bool(conn is not None and conn.closed)

    def _rollback_quietly(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")

    def _lock_for_migration(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7412001)")

    def _lock_chain_head(self, cur: Any, chain: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7412002, hashtext(%s))", (chain,))

    def _notify(self, cur: Any, channel: str, payload: str) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def wait_for_notification(self, timeout: float) -> bool:
        """Block until a NOTIFY on ``wflo_runs`` arrives or ``timeout`` passes."""
        with self._listen_lock:
            if self._listen_conn is None or self._listen_conn.closed:
                try:
                    self._listen_conn = self._connect()
                    self._listen_conn.execute("LISTEN wflo_runs")
                except Exception:
                    self._listen_conn = None
                    return super().wait_for_notification(timeout)
            conn = self._listen_conn
        try:
            got = False
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                got = True
            return got
        except self._psycopg.Error:
            with self._listen_lock:
                self._listen_conn = None
            return False

    def close(self) -> None:
        with self._listen_lock:
            if self._listen_conn is not None:
                with contextlib.suppress(Exception):
                    self._listen_conn.close()
                self._listen_conn = None
        super().close()


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url
