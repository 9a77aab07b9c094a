"""Streaming reads: the rows of one query as the caller consumes them, from one snapshot.

``Store.read`` returns every row at once, fine for a page but not for a million events: the
whole result sits in memory, and paging by key costs a new query (and a new snapshot) per
page. ``Store.stream`` keeps one query open on one pooled connection inside one read
transaction and fetches ``batch`` rows at a time:

- SQLite: a plain cursor after ``BEGIN`` (deferred; the read transaction, and so the
  snapshot, starts with the query), fetched with ``fetchmany``; WAL lets writers go on
  meanwhile, and the snapshot keeps a checkpoint from recycling the WAL past it until the
  stream ends (a long stream lets the WAL grow);
- PostgreSQL: a server-side (named) cursor, ``DECLARE … CURSOR`` in a ``READ ONLY``
  transaction, each batch one ``FETCH``; only one batch is ever held by the client.

The connection is not the thread's "held" connection (see ``_conn``): other store calls made
while the stream is open, on the same thread or another, use connections of their own (so
a stream holds one pooled connection more until it is closed). Inside a write transaction
the stream reads through that transaction's connection (it sees the transaction's writes)
and leaves the transaction to its owner.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from .._errors import StoreUnavailableError

if TYPE_CHECKING:
    from ._conn import Connections

Row = tuple[Any, ...]

DEFAULT_BATCH = 1000
"""Rows fetched per call to the driver (measured best on SQLite; one round trip on PostgreSQL)."""

_names = itertools.count(1)


class RowStream:
    """The rows of one read-only query, fetched ``batch`` at a time (see ``Store.stream``).

    Iterating yields rows; :meth:`batches` yields lists of up to ``batch`` rows. The stream
    ends, and gives its connection back, when it is exhausted, when :meth:`close` is called,
    when the ``with`` block it was opened in ends, or when an iteration over it is abandoned
    (``break``, an exception) and the iterator is dropped.
    """

    def __init__(self, store: Connections, sql: str, params: Sequence[Any], batch: int) -> None:
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a whole number of at least 1, got {batch!r}")
        self.batch = batch
        self._store = store
        self._own = False  # the connection (and its read transaction) is the stream's
        held = getattr(store._local, "held", None)
        if held is not None:  # inside a write transaction: read through it, leave it be
            self._conn, self._cur = held, store._open_stream(held, store._sql(sql), tuple(params), own=False)
        else:
            store._retrying(lambda: self._open(sql, params))
        self._closed = False

    def _open(self, sql: str, params: Sequence[Any]) -> None:
        store = self._store
        pool = store._get_pool()
        conn = pool.get()
        try:
            cur = store._open_stream(conn, store._sql(sql), tuple(params), own=True)
        except BaseException as exc:
            store._end_stream(conn, None)
            pool.put(conn, broken=store._is_disconnect(exc) or store._conn_broken(conn))
            raise
        self._pool, self._conn, self._cur, self._own = pool, conn, cur, True

    def batches(self) -> Iterator[list[Row]]:
        """Lists of up to ``batch`` rows, in the query's order, until the rows run out."""
        try:
            while not self._closed:
                rows = self._fetch()
                if rows:
                    yield rows
                if len(rows) < self.batch:
                    break
        finally:
            self.close()

    def _fetch(self) -> list[Row]:
        try:
            rows: list[Row] = self._cur.fetchmany(self.batch)
            return rows
        except Exception as exc:
            store = self._store
            better = store._translate_error(exc)
            if better is not None:
                raise better from None
            if store._is_disconnect(exc):
                # Not retried here (the rows already handed out cannot be taken back): the
                # caller may open a new stream from the last key it read.
                self._broken = True
                raise StoreUnavailableError(
                    url=store._display_url(), detail=f"the connection was lost while streaming rows ({exc})"
                ) from exc
            raise

    _broken = False
    _closed = True  # until opened: a stream whose opening failed has nothing to close

    def __iter__(self) -> Iterator[Row]:
        for rows in self.batches():
            yield from rows

    def close(self) -> None:
        """End the query and its read transaction and give the connection back (idempotent)."""
        if self._closed:
            return
        self._closed = True
        cur, conn = self._cur, self._conn
        self._cur = self._conn = None
        if conn is None:
            return
        store = self._store
        if not self._own:
            with suppress(Exception):
                cur.close()
            return
        store._end_stream(conn, cur)
        self._pool.put(conn, broken=self._broken or store._conn_broken(conn))

    def __enter__(self) -> RowStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A stream dropped unclosed (never iterated, or its iterator kept elsewhere) still
        # ends its transaction: an open one would keep SQLite's WAL from being recycled.
        with suppress(Exception):
            self.close()


def cursor_name() -> str:
    """A name for a server-side cursor, unique in this process."""
    return f"wflo_stream_{next(_names)}"
