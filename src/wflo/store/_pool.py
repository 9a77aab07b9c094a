"""Bounded connection pools: a store holds at most ``size`` connections per process.

Connections are checked out for one transaction (or one read) and returned at once, never
kept per thread: code that starts a new thread for every call (LangGraph writes checkpoints
from fresh threads) would otherwise open a connection per thread until ``close()``, and a
PostgreSQL server refuses clients past ``max_connections``.

``BoundedPool`` serves SQLite (a connection is a file handle there, cheap to open, but each
holds descriptors on the file and its WAL); PostgreSQL uses ``psycopg_pool`` through the
same small interface (``get``/``put``/``close``/``discard_idle``): ``PsycopgPool``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError, StoreUnavailableError

if TYPE_CHECKING:
    from ._postgres import PostgresStore

DEFAULT_POOL_SIZE = 10
"""Connections per store per process (a PostgreSQL store adds one for LISTEN)."""

DEFAULT_POOL_TIMEOUT = 30.0
"""Seconds a thread waits for a free connection before ``StoreUnavailableError``."""


class BoundedPool:
    """At most ``size`` connections made by ``connect``; idle ones are reused (LIFO)."""

    def __init__(
        self, connect: Callable[[], Any], *, size: int, timeout: float, url: str, close: Callable[[Any], None]
    ) -> None:
        self._connect = connect
        self._close = close
        self.size = size
        self.timeout = timeout
        self.url = url
        self._idle: list[Any] = []
        self._open = 0
        self._cond = threading.Condition()
        self._waiting = 0  # threads in ``get`` waiting for a connection
        self._closed = False

    def get(self) -> Any:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._open < self.size:
                    self._open += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailableError(
                        url=self.url,
                        detail=f"all {self.size} pooled connections stayed busy for {self.timeout:g} s "
                        "(raise pool_size in the URL, or find the long transaction)",
                    )
                self._waiting += 1
                try:
                    self._cond.wait(left)
                finally:
                    self._waiting -= 1
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def put(self, conn: Any, *, broken: bool = False) -> None:
        with self._cond:
            if broken or self._closed:
                self._open -= 1
            else:
                self._idle.append(conn)
                conn = None
            if self._waiting:  # ``notify`` is Python code: ~1 µs of every transaction, saved
                self._cond.notify()
        if conn is not None:
            with suppress(Exception):
                self._close(conn)

    def discard_idle(self) -> None:
        """Close the idle connections (after a lost connection, the others are suspect too)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            with suppress(Exception):
                self._close(conn)

    def close(self) -> None:
        with self._cond:
            self._closed = True
        self.discard_idle()

    @property
    def open_connections(self) -> int:
        with self._cond:
            return self._open


_IDLE_GET_TIMEOUT = 0.002  # s: the longest ``get_idle`` can wait, when another thread won the race


@functools.cache
def _most_recent_first(base: Any) -> Any:
    """``psycopg_pool.ConnectionPool`` handing out the idle connection returned last (LIFO).

    Its own order is first in, first out: with two idle connections a run's creation and its
    end, or two steps in a row, each went to a different server process, one that had slept
    since the run before (issue 20: on a small VM a statement sent to an idle backend costs
    2 to 3 times one sent to a backend busy a moment ago). The last one back ran the previous
    statement. Connections left idle at the back are the ones the pool's ``max_idle`` closes.
    Without the private hook (another psycopg_pool): the pool as it is."""
    if not hasattr(base, "_get_ready_connection"):
        return base

    class MostRecentFirst(base):  # type: ignore[misc]
        def _get_ready_connection(self, timeout: float | None) -> Any:
            idle = getattr(self, "_pool", None)  # called under the pool's lock
            if isinstance(idle, deque) and len(idle) > 1:  # (another layout: the pool's own order)
                idle.rotate(1)  # the last one back first; the others keep their order
            return super()._get_ready_connection(timeout)

    return MostRecentFirst


_HOT_WAIT = 0.05  # s: how often a thread waiting for a connection looks in ``PsycopgPool``'s slot
_IDLE = 0  # libpq's PQTRANS_IDLE (``psycopg.pq.TransactionStatus.IDLE``)
_CONNECTION_OK = 0  # libpq's CONNECTION_OK


class PsycopgPool:
    """``psycopg_pool.ConnectionPool`` behind the store's small pool interface.

    The connection given back last waits in a slot of its own (``_hot``) for the next ``get``,
    not in ``psycopg_pool``'s queue (issue 20, measured): ``getconn`` and ``putconn`` are Python
    code with a lock, statistics and log calls each, about a quarter of the client's work for a
    step's append (the slot: a list's pop and append, atomic under the GIL). It is the
    connection ``psycopg_pool`` would have handed out next (the last one back, see
    ``_most_recent_first``; the one it displaces goes back to ``psycopg_pool``); for
    ``psycopg_pool`` it stays checked out, so the bound on connections holds as before. Only an
    idle, healthy connection waits there, and not past its ``max_lifetime`` (it then goes back
    through ``putconn``, which replaces it), and only while no thread waits in ``psycopg_pool``
    for one (it is then handed to the first of them there); a broken one goes back as before,
    and the slot's one on ``discard_idle`` (then checked with the others) and ``close``.
    """

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
        self._pool = _most_recent_first(ConnectionPool)(
            store.url,
            kwargs=store._kwargs(),
            min_size=1,
            max_size=store.pool_size,
            timeout=store.pool_timeout,
            max_idle=60.0,
            num_workers=2,
            name="wflo",
            configure=store._warm,
            open=False,
        )
        self._pool.open(wait=False)
        self._hot: list[Any] = []  # at most one connection, idle, checked out of ``_pool``

    def get(self) -> Any:
        hot = self._hot
        if hot:
            try:
                return hot.pop()
            except IndexError:  # another thread took it meanwhile
                pass
        # A connection put in the slot just before this thread began to wait in psycopg_pool
        # would not wake it (``put`` hands it to psycopg_pool only when somebody waits there
        # already): wait in slices, and look in the slot between them.
        deadline = time.monotonic() + self._store.pool_timeout
        try:
            while True:
                try:
                    return self._pool.getconn(timeout=max(min(_HOT_WAIT, deadline - time.monotonic()), 0.001))
                except self._timeout_error:
                    if time.monotonic() >= deadline:
                        raise
                if hot:
                    try:
                        return hot.pop()
                    except IndexError:
                        pass
        except self._timeout_error:
            try:
                self._store._connect().close()
            except StoreUnavailableError:
                raise
            raise StoreUnavailableError(
                url=self._store._display_url(),
                detail=f"all {self._store.pool_size} pooled connections stayed busy for "
                f"{self._store.pool_timeout:g} s (raise pool_size in the URL, or find the long transaction)",
            ) from None

    def get_idle(self) -> Any:
        """A connection only if one is idle in the pool now (never waits for one), else ``None``."""
        hot = self._hot
        if hot:
            try:
                return hot.pop()
            except IndexError:
                pass
        idle = getattr(self._pool, "_pool", None)  # psycopg_pool's idle connections
        if not idle:
            return None
        try:
            # Another thread may take it meanwhile: a bounded wait, then none.
            return self._pool.getconn(timeout=_IDLE_GET_TIMEOUT)
        except self._timeout_error:
            return None

    def put(self, conn: Any, *, broken: bool = False) -> None:
        if broken:
            with suppress(Exception):
                conn.close()  # the pool then replaces it instead of handing it out again
        # Whether ``conn`` may wait in the slot (open, idle, not past its lifetime, the pool
        # open) and nobody waits in psycopg_pool: written out, as this runs once per transaction.
        elif (
            (pgconn := conn.pgconn).status == _CONNECTION_OK
            and pgconn.transaction_status == _IDLE
            and getattr(conn, "_expire_at", 0.0) > time.monotonic()
            and not getattr(self._pool, "_waiting", True)
            and not self._pool.closed
        ):
            hot = self._hot
            hot.append(conn)  # the last one back is the next one out
            while len(hot) > 1:  # the one it displaces goes back to psycopg_pool
                try:
                    conn = hot.pop(0)
                except IndexError:  # taken meanwhile
                    return
                self._pool.putconn(conn)
            return
        self._pool.putconn(conn)

    def _give_back_hot(self) -> None:
        """The slot's connection back to ``psycopg_pool`` (which checks it as any other)."""
        while self._hot:
            try:
                conn = self._hot.pop()
            except IndexError:
                return
            with suppress(Exception):
                self._pool.putconn(conn)

    def discard_idle(self) -> None:
        self._give_back_hot()
        self._pool.check()

    def close(self) -> None:
        self._give_back_hot()
        self._pool.close(timeout=5.0)
