"""``Store.write_rows``: rows written in one transaction, fenced on a run's lease, relaxed on request.

The LangGraph checkpointer's writes go through it (issue 20): on SQLite it runs the statements
on the pooled connection directly, so each guarantee of ``write_batch`` is pinned here again
on both stores: all rows or none, the lease check before anything is written, the relaxed
commit's level not leaking to the next transaction, the pool not poisoned by a failure.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from wflo._errors import LeaseLost
from wflo.store import Store, open_store

TABLE = "CREATE TABLE wr_items (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"
UPSERT = "INSERT INTO wr_items (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    sep = "&" if "?" in store_url else "?"
    with open_store(f"{store_url}{sep}pool_size=1") as s:  # one connection: a leak would show
        s.ensure_schema()
        s.write(lambda cur: s.execute(cur, TABLE))
        yield s


def _items(store: Store) -> list[tuple[Any, ...]]:
    return store.read("SELECT k, v FROM wr_items ORDER BY k")


def test_rows_are_written_in_one_transaction(store: Store) -> None:
    store.write_rows(UPSERT, [("a", 1), ("b", 2)])
    store.write_rows(UPSERT, [("b", 3)])
    assert _items(store) == [("a", 1), ("b", 3)]
    store.write_rows(UPSERT, [])  # nothing to write: a transaction that commits nothing
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.NotNullViolation)):
        store.write_rows(UPSERT, [("c", 4), ("d", None)])  # the second row fails: neither is kept
    assert _items(store) == [("a", 1), ("b", 3)]
    store.write_rows(UPSERT, [("c", 5)])  # the pool's connection is usable after the failure
    assert _items(store) == [("a", 1), ("b", 3), ("c", 5)]


def test_a_fenced_write_lands_only_under_the_lease(store: Store) -> None:
    store.create_run(run_id="r1", workflow="w", input={}, owner="me", lease_seconds=30)
    store.write_rows(UPSERT, [("a", 1)], fence=("r1", "me"))
    store.write_rows(UPSERT, [("b", 1)], fence=("r1", "me"), relaxed=True)
    store.write(lambda cur: store.execute(cur, "UPDATE runs SET lease_owner = 'thief' WHERE id = 'r1'"))
    for relaxed in (False, True):
        with pytest.raises(LeaseLost) as lost:
            store.write_rows(UPSERT, [("c", 1)], fence=("r1", "me"), relaxed=relaxed)
        assert (lost.value.run_id, lost.value.owner) == ("r1", "me")
    with pytest.raises(LeaseLost):
        store.write_rows(UPSERT, [("c", 1)], fence=("no-such-run", "me"))
    assert _items(store) == [("a", 1), ("b", 1)]
    store.write_rows(UPSERT, [("c", 1)], fence=("r1", "thief"))
    assert [k for k, _ in _items(store)] == ["a", "b", "c"]


def _level(store: Store) -> int:
    return int(store.write(lambda cur: cur.execute("PRAGMA synchronous").fetchone()[0]))


@pytest.fixture
def full_store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path}/full.db?synchronous=FULL&pool_size=1") as s:
        s.ensure_schema()
        s.write(lambda cur: s.execute(cur, TABLE))
        yield s


def _traced(store: Store) -> list[str]:
    """The statements the store's one pooled connection runs from now on."""
    seen: list[str] = []
    store.read("SELECT 1")  # the connection exists and is idle in the pool
    (conn,) = store._get_pool()._idle
    conn.set_trace_callback(seen.append)
    return seen


def test_a_relaxed_commit_on_sqlite_is_at_normal_and_does_not_leak(full_store: Store) -> None:
    seen = _traced(full_store)
    full_store.write_rows(UPSERT, [("a", 1)], relaxed=True)
    full_store.write_rows(UPSERT, [("b", 1)])
    assert seen == [
        "PRAGMA synchronous = NORMAL", "BEGIN IMMEDIATE", "INSERT INTO wr_items (k, v) VALUES ('a', 1) "
        "ON CONFLICT (k) DO UPDATE SET v = excluded.v", "COMMIT", "PRAGMA synchronous = FULL",
        "BEGIN IMMEDIATE", "INSERT INTO wr_items (k, v) VALUES ('b', 1) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        "COMMIT",
    ]  # fmt: skip
    assert _level(full_store) == 2
    full_store.create_run(run_id="r1", workflow="w", input={}, owner="me", lease_seconds=30)
    full_store.write(lambda cur: full_store.execute(cur, "UPDATE runs SET lease_owner = 'thief' WHERE id = 'r1'"))
    with pytest.raises(LeaseLost):  # a relaxed write that fails puts the level back too
        full_store.write_rows(UPSERT, [("c", 1)], fence=("r1", "me"), relaxed=True)
    assert _level(full_store) == 2
    assert full_store.read("PRAGMA synchronous") == [(2,)]


def test_relaxed_on_a_normal_store_changes_nothing(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/n.db?pool_size=1") as s:
        s.write(lambda cur: s.execute(cur, TABLE))
        seen = _traced(s)
        s.write_rows(UPSERT, [("a", 1)], relaxed=True)
        assert [q for q in seen if q.startswith("PRAGMA")] == []
        assert _items(s) == [("a", 1)]


def test_bytes_text_and_nulls_come_back_as_written(store: Store) -> None:
    # PostgreSQL sends bytes as binary parameters (``_pgdirect.direct_rows``): every byte value, NUL and
    # bytes that are no UTF-8 included, must come back as it went, beside text and NULL.
    blob = "BYTEA" if store.dialect == "postgresql" else "BLOB"
    store.write(lambda cur: store.execute(cur, f"CREATE TABLE wr_blobs (k TEXT PRIMARY KEY, b {blob}, t TEXT)"))
    rows = [("a", bytes(range(256)), "é\\x"), ("b", b"", None), ("c", None, "")]
    store.write_rows("INSERT INTO wr_blobs (k, b, t) VALUES (?, ?, ?)", rows)
    back = [
        (k, None if b is None else bytes(b), t) for k, b, t in store.read("SELECT k, b, t FROM wr_blobs ORDER BY k")
    ]
    assert back == rows


@pytest.mark.parametrize("inner", ["write", "write_batch", "write_rows"])
def test_a_write_inside_another_write_is_refused_and_commits_nothing(store: Store, inner: str) -> None:
    # On PostgreSQL the inner transaction's BEGIN is only a warning: its COMMIT used to commit
    # the outer transaction's rows before the outer one failed.
    from wflo._errors import StoreError

    def nested(cur: Any) -> None:
        store.execute(cur, UPSERT, ("outer", 1))
        if inner == "write_rows":
            store.write_rows(UPSERT, [("inner", 2)])
        else:
            getattr(store, inner)(lambda c: store.execute(c, UPSERT, ("inner", 2)))

    with pytest.raises(StoreError, match="inside another write transaction"):
        store.write(nested)
    assert _items(store) == []
    store.write_rows(UPSERT, [("after", 3)])  # the flag and the pool are left clean
    assert _items(store) == [("after", 3)]
