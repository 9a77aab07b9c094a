"""PostgreSQL backend: the scale-out store (many workers on many machines)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from .._errors import ConfigurationError, StoreUnavailableError
from ._base import Store
from ._pool import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT


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

    Connections come from a ``psycopg_pool`` pool of at most ``pool_size`` per process (plus
    one for ``LISTEN``), one per transaction. Lease times are the server's
    ``clock_timestamp()``, so workers on machines with skewed clocks agree on expiry.
    """

    dialect = "postgresql"
    placeholder = "%s"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, pool_timeout: float = DEFAULT_POOL_TIMEOUT
    ) -> None:
        super().__init__(url, pool_size=pool_size, pool_timeout=pool_timeout)
        self._psycopg = _psycopg()

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
        if "application_name" not in self.url:
            kwargs["application_name"] = "wflo"  # so operators can find wflo in pg_stat_activity
        return kwargs

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, **self._kwargs())
        except self._psycopg.Error as exc:
            raise StoreUnavailableError(url=_redact(self.url), detail=_first_line(exc)) from None

    def _make_pool(self) -> Any:
        return _PsycopgPool(self)

    def _conn_broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def _clock(self, cur: Any) -> datetime:
        # clock_timestamp(), not now(): now() is the transaction's start, which a long
        # transaction would leave behind.
        cur.execute("SELECT clock_timestamp()")
        moment: datetime = cur.fetchone()[0]
        return moment.astimezone(UTC)

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN")

    def _is_disconnect(self, error: BaseException) -> bool:
        psycopg = self._psycopg
        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)

    def _rollback_quietly(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")

    def _lock_for_migration(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7412001)")

    def _lock_chain_head(self, cur: Any, chain: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7412002, hashtext(%s))", (chain,))

    def _lock_queue(self, cur: Any, queue: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7412003, hashtext(%s))", (queue,))

    def _notify(self, cur: Any, channel: str, payload: str) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def _open_watch(self) -> Any:
        conn = self._connect()
        conn.execute("LISTEN wflo_runs")
        return conn

    def _watch(self, watch: Any, timeout: float) -> list[str | None]:
        return [n.payload for n in watch.notifies(timeout=timeout, stop_after=1)]

    def _close_watch(self, watch: Any) -> None:
        if watch is not None:
            watch.close()


class _PsycopgPool:
    """``psycopg_pool.ConnectionPool`` behind the store's small pool interface."""

    def __init__(self, store: PostgresStore) -> None:
        try:
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError:
            raise ConfigurationError("the PostgreSQL store needs psycopg_pool: pip install 'wflo[postgres]'") from None
        self._timeout_error = PoolTimeout
        self._store = store
        # One direct connection first: an unreachable server or a wrong password is then a
        # one-line error at once, not a pool timeout after many silent retries.
        store._connect().close()
        self._pool = ConnectionPool(
            store.url,
            kwargs=store._kwargs(),
            min_size=1,
            max_size=store.pool_size,
            timeout=store.pool_timeout,
            max_idle=60.0,
            num_workers=2,
            name="wflo",
            open=False,
        )
        self._pool.open(wait=False)

    def get(self) -> Any:
        try:
            return self._pool.getconn()
        except self._timeout_error:
            try:
                self._store._connect().close()
            except StoreUnavailableError:
                raise
            raise StoreUnavailableError(
                url=_redact(self._store.url),
                detail=f"all {self._store.pool_size} pooled connections stayed busy for "
                f"{self._store.pool_timeout:g} s (raise pool_size in the URL, or find the long transaction)",
            ) from None

    def put(self, conn: Any, *, broken: bool = False) -> None:
        if broken:
            with contextlib.suppress(Exception):
                conn.close()  # the pool then replaces it instead of handing it out again
        self._pool.putconn(conn)

    def discard_idle(self) -> None:
        self._pool.check()

    def close(self) -> None:
        self._pool.close(timeout=5.0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url
