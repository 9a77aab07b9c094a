"""``Store.stream``: a read-only query's rows as they are consumed, from one snapshot.

Tried on both stores with real connections: the rows and their order, one snapshot while a
writer appends, the transaction and connection given back on every way out (exhausted,
``break``, an exception, ``close()``, dropped unread), and memory that does not grow with
the number of rows.
"""

from __future__ import annotations

import gc
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from peaks import peak_bytes
from wflo.store import NewEvent, RowStream, Store, open_store

CHAIN = "_stream"


def _fill(store: Store, n: int, chain: str = CHAIN) -> None:
    for i in range(0, n, 500):
        store.append_chain(chain, [NewEvent("x", {"i": j}) for j in range(i, min(n, i + 500))])


def _seqs(rows: Any) -> list[int]:
    return [int(r[0]) for r in rows]


def test_rows_in_order_and_batches_of_the_asked_size(store_url: str) -> None:
    with open_store(store_url) as store:
        _fill(store, 1234)
        sql, params = "SELECT seq, data FROM events WHERE chain = ? ORDER BY seq", (CHAIN,)
        expected = store.read(sql, params)
        assert [tuple(r) for r in store.stream(sql, params, batch=100)] == expected
        sizes = [len(b) for b in store.stream(sql, params, batch=500).batches()]
        assert sizes == [500, 500, 234]
        assert [len(b) for b in store.stream(sql, params, batch=1234).batches()] == [1234]
        assert list(store.stream(sql, ("no-such-chain",))) == []
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError):
                store.stream(sql, params, batch=bad)  # type: ignore[arg-type]


def test_one_snapshot_while_a_writer_appends(store_url: str) -> None:
    # Rows appended after the stream began sort after the ones it is reading: a stream read
    # page by page (a query per page) would pick them up; one snapshot never does.
    with open_store(store_url) as store:
        _fill(store, 300)
        with store.stream("SELECT seq FROM events WHERE chain = ? ORDER BY seq", (CHAIN,), batch=100) as stream:
            batches = stream.batches()
            first = next(batches)
            _fill(store, 200)  # another connection commits 200 more meanwhile
            assert store.read_one("SELECT COUNT(*) FROM events WHERE chain = ?", (CHAIN,)) == (500,)
            rest = [r for b in batches for r in b]
        assert _seqs(first + rest) == list(range(1, 301))
        assert _seqs(store.stream("SELECT seq FROM events WHERE chain = ? ORDER BY seq", (CHAIN,))) == list(
            range(1, 501)
        )


def test_inside_a_write_transaction_it_sees_that_transactions_writes(store_url: str) -> None:
    with open_store(store_url) as store:
        store.write(lambda cur: store.execute(cur, "CREATE TABLE stream_t (i INTEGER)"))

        def body(cur: Any) -> list[tuple[Any, ...]]:
            for i in range(5):
                store.execute(cur, "INSERT INTO stream_t (i) VALUES (?)", (i,))
            return [tuple(r) for r in store.stream("SELECT i FROM stream_t ORDER BY i", batch=2)]

        assert store.write(body) == [(i,) for i in range(5)]
        assert store.read_one("SELECT COUNT(*) FROM stream_t") == (5,)  # committed by its owner


@contextmanager
def _store_watched(store_url: str) -> Iterator[tuple[Store, Any]]:
    """A store, and a function telling whether a read transaction of it is still open."""
    if store_url.startswith("sqlite"):
        path = store_url.split(":///", 1)[1]
        with open_store(store_url) as store:

            def reader_open() -> bool:
                # A reader on an old snapshot keeps a TRUNCATE checkpoint from finishing.
                _fill(store, 10, "_stream_later")
                conn = sqlite3.connect(path)
                try:
                    busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    conn.close()
                return bool(busy)

            yield store, reader_open
        return
    import psycopg

    name = f"stream_{uuid.uuid4().hex[:10]}"
    with open_store(f"{store_url}&application_name={name}") as store, psycopg.connect(store_url) as admin:
        admin.autocommit = True

        def reader_open() -> bool:
            rows = admin.execute(
                "SELECT state FROM pg_stat_activity WHERE application_name = %s AND state LIKE 'idle in transaction%%'",
                (name,),
            ).fetchall()
            return bool(rows)

        yield store, reader_open


def _ways_out(store: Store) -> Iterator[tuple[str, Any]]:
    sql, params = "SELECT seq FROM events WHERE chain = ? ORDER BY seq", (CHAIN,)

    def exhausted() -> None:
        assert len(list(store.stream(sql, params, batch=7))) == 300

    def break_out() -> None:
        for row in store.stream(sql, params, batch=7):
            if row[0] == 10:
                break

    def break_out_of_batches() -> None:
        for _batch in store.stream(sql, params, batch=7).batches():
            break

    def raise_inside_with() -> None:
        with pytest.raises(KeyError), store.stream(sql, params, batch=7) as stream:
            for _row in stream:
                raise KeyError("the caller's own error")

    def close_early() -> None:
        stream = store.stream(sql, params, batch=7)
        rows = iter(stream)
        next(rows)
        stream.close()
        stream.close()  # twice is fine
        assert list(stream) == []

    def never_read() -> None:
        store.stream(sql, params, batch=7)  # dropped at once

    yield from [(f.__name__, f) for f in (exhausted, break_out, break_out_of_batches, raise_inside_with, close_early,
                                          never_read)]  # fmt: skip


def test_every_way_out_ends_the_read_transaction_and_returns_the_connection(store_url: str) -> None:
    with _store_watched(store_url) as (store, reader_open):
        _fill(store, 300)
        stream = store.stream("SELECT seq FROM events WHERE chain = ? ORDER BY seq", (CHAIN,), batch=7)
        batches = stream.batches()
        next(batches)
        assert reader_open()  # the check itself sees an open stream
        stream.close()
        assert list(batches) == []
        for name, way in _ways_out(store):
            gc.collect()
            way()
            assert not reader_open(), name
        # Nothing leaked from the pool: more streams than it has connections, one after another.
        for _ in range(store.pool_size * 3):
            for _batch in store.stream("SELECT seq FROM events WHERE chain = ?", (CHAIN,), batch=7).batches():
                break


def test_a_query_that_fails_gives_its_connection_back(store_url: str) -> None:
    with open_store(
        store_url.replace("pool_size=", "x=") + ("&" if "?" in store_url else "?") + "pool_size=2"
    ) as store:
        for _ in range(6):
            with pytest.raises(Exception, match=r"no_such_table|does not exist|no such table"):
                store.stream("SELECT * FROM no_such_table")
        assert store.read_one("SELECT 1") == (1,)


def test_a_large_result_is_not_held_in_memory(store_url: str) -> None:
    # tracemalloc counts the rows Python holds: read() holds them all, stream() one batch.
    n = 40_000
    with open_store(store_url) as store:
        store.write(lambda cur: store.execute(cur, "CREATE TABLE stream_big (i INTEGER, body TEXT)"))
        for start in range(0, n, 10_000):
            store.write(lambda cur, s=start: cur.executemany(
                "INSERT INTO stream_big (i, body) VALUES (?, ?)" if store.dialect == "sqlite"
                else "INSERT INTO stream_big (i, body) VALUES (%s, %s)",
                [(i, f"{i:08d}" * 25) for i in range(s, s + 10_000)],
            ))  # fmt: skip
        sql = "SELECT i, body FROM stream_big ORDER BY i"

        def streamed() -> None:
            total = 0
            for row in store.stream(sql, batch=500):
                total += len(row[1])
            assert total == n * 200

        def whole() -> None:
            assert len(store.read(sql)) == n

        held_all, held_stream = peak_bytes(whole), peak_bytes(streamed)
        assert held_all > n * 200  # the check can see the rows
        assert held_stream < held_all / 10, (held_stream, held_all)
        assert held_stream < 2_000_000, held_stream


def test_the_stream_is_a_public_name() -> None:
    assert isinstance(RowStream, type)


def test_a_connection_lost_mid_stream_raises_store_unavailable(pg_url: str) -> None:
    import psycopg

    from wflo.errors import StoreUnavailableError

    name = f"stream_{uuid.uuid4().hex[:10]}"
    with open_store(f"{pg_url}&application_name={name}") as store:
        _fill(store, 300)
        stream = store.stream("SELECT seq FROM events WHERE chain = ? ORDER BY seq", (CHAIN,), batch=7)
        batches = stream.batches()
        next(batches)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
                "AND state LIKE 'idle in transaction%%'",
                (name,),
            )
        with pytest.raises(StoreUnavailableError, match="lost while streaming"):
            next(batches)
        # The dead connection was not put back: the next reads work.
        for _ in range(store.pool_size + 1):
            assert len(list(store.stream("SELECT seq FROM events WHERE chain = ?", (CHAIN,)))) == 300
