"""PostgreSQL's hot append goes straight to libpq (issue 20): ``PostgresStore._direct`` sends
the prepared append (a step's statement, or ``wflo_append``) without psycopg's cursor. What
that path must still do: raise ``LeaseLost`` for a lost lease, raise other errors as psycopg's
classes, survive a session that lost its prepared statements and a connection the server
dropped, commit relaxed only where it did, and prepare nothing behind a transaction pooler.
The same for ``write_rows`` (the LangGraph checkpointer's writes), which pipelines its
statements in one implicit transaction through ``direct_rows`` (both in
``wflo.store._pgdirect``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from wflo._errors import LeaseLost
from wflo.store import Head, NewEvent, open_store
from wflo.store._pgdirect import alone
from wflo.store._postgres import PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    with open_store(f"{pg_url}&pool_size=1") as opened:
        assert isinstance(opened, PostgresStore)
        yield opened


def _sent(store: PostgresStore) -> list[str]:
    """The statements the store sends through ``_direct`` from now on."""
    sent: list[str] = []
    direct = store._direct

    def spy(conn: Any, stmt: Any, params: Any) -> Any:
        sent.append(stmt.sql)
        return direct(conn, stmt, params)

    store._direct = spy  # type: ignore[method-assign]
    return sent


def _run(store: PostgresStore, run_id: str) -> Head:
    run, _ = store.create_run(run_id=run_id, workflow="w", input={}, owner="a", lease_seconds=30)
    return Head(run.last_seq, run.last_hash)


def _prepared(store: PostgresStore) -> list[str]:
    with store._connection() as conn:
        rows = conn.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE 'wflo!_%' ESCAPE '!'").fetchall()
    return [r[0] for r in rows]


def test_a_lost_lease_still_raises_lease_lost_through_the_direct_path(store: PostgresStore) -> None:
    head = _run(store, "r-direct-fence")
    sent = _sent(store)
    with pytest.raises(LeaseLost):
        store.append("r-direct-fence", head, [NewEvent("step.completed", {})], owner="b")
    with pytest.raises(LeaseLost):  # a stale head, even for the holder
        store.append("r-direct-fence", Head(head.seq - 1, head.hash), [NewEvent("step.completed", {})], owner="a")
    assert sent and all("wflo_lease_lost" in s for s in sent)  # a step's statement (m025)
    new = store.append("r-direct-fence", head, [NewEvent("step.completed", {"n": 1})], owner="a")
    assert new.seq == head.seq + 1
    assert [e.type for e in store.events("r-direct-fence")][-1] == "step.completed"
    with store._connection() as conn:  # left idle: no transaction open, nothing pending
        assert alone(conn)


def test_other_errors_keep_psycopg_classes_and_leave_the_connection_usable(store: PostgresStore) -> None:
    head = _run(store, "r-direct-error")
    sent = _sent(store)
    with pytest.raises(psycopg.DataError):  # the server refuses NUL in text, as psycopg did before
        store.append("r-direct-error", head, [NewEvent("x", {})], owner="a", status="wait\x00ing")
    with pytest.raises(psycopg.DataError):  # inside the events' arrays too
        store.append("r-direct-error", head, [NewEvent("x\x00y", {})], owner="a")
    assert sent
    assert store.get_run("r-direct-error").last_seq == head.seq
    assert store.append("r-direct-error", head, [NewEvent("x", {})], owner="a").seq == head.seq + 1


def test_a_session_that_lost_its_prepared_statements_recovers(store: PostgresStore) -> None:
    head = _run(store, "r-direct-dealloc")
    head = store.append("r-direct-dealloc", head, [NewEvent("a", {})], owner="a")
    assert len(_prepared(store)) >= 1
    store.write(lambda cur: cur.execute("DEALLOCATE ALL"))  # pool_size=1: the same session
    assert _prepared(store) == []
    sent = _sent(store)
    head = store.append("r-direct-dealloc", head, [NewEvent("b", {})], owner="a")
    assert sent and len(_prepared(store)) >= 1
    assert [e.type for e in store.events("r-direct-dealloc")][-2:] == ["a", "b"]
    assert store.get_run("r-direct-dealloc").last_seq == head.seq


def test_a_connection_the_server_dropped_is_replaced_and_the_append_retried(store: PostgresStore) -> None:
    head = _run(store, "r-direct-drop")
    head = store.append("r-direct-drop", head, [NewEvent("a", {})], owner="a")
    with store._connection() as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(store.url, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    head = store.append("r-direct-drop", head, [NewEvent("b", {})], owner="a")
    assert [e.type for e in store.events("r-direct-drop")][-2:] == ["a", "b"]
    with store._connection() as conn:
        assert conn.info.backend_pid != pid


def test_markers_alone_commit_relaxed_and_everything_else_durably(store: PostgresStore) -> None:
    head = _run(store, "r-direct-modes")
    sent = _sent(store)
    head = store.append("r-direct-modes", head, [NewEvent("run.resumed", {})], owner="a")
    head = store.append("r-direct-modes", head, [NewEvent("step.completed", {})], owner="a")
    assert len(sent) == 2
    assert "synchronous_commit" in sent[0] and "synchronous_commit" not in sent[1]


def test_behind_a_transaction_pooler_nothing_is_prepared(pg_url: str) -> None:
    with open_store(f"{pg_url}&pool_size=1&pooler=transaction") as store:
        assert isinstance(store, PostgresStore)
        head = _run(store, "r-direct-pooler")
        sent = _sent(store)
        for i in range(8):  # past psycopg's prepare threshold
            head = store.append("r-direct-pooler", head, [NewEvent(f"e{i}", {"i": i})], owner="a")
        assert len(sent) == 8
        with store._connection() as conn:
            assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
        with pytest.raises(LeaseLost):
            store.append("r-direct-pooler", head, [NewEvent("late", {})], owner="b")


def test_a_statement_prepared_at_its_first_use_costs_no_round_trip_more(store: PostgresStore) -> None:
    head = _run(store, "r-direct-first")
    store.write(lambda cur: cur.execute("DEALLOCATE ALL"))
    with store._connection() as conn:
        from wflo.store import _pgdirect

        _pgdirect.PREPARED.pop(conn, None)  # a connection that never prepared it
        waits: list[str] = []
        wait = conn.wait

        def counted(gen: Any, *args: Any, **kwargs: Any) -> Any:
            waits.append(getattr(gen, "__name__", "?"))
            return wait(gen, *args, **kwargs)

        conn.wait = counted
        try:
            store.append("r-direct-first", head, [NewEvent("a", {})], owner="a")
        finally:
            del conn.wait
    assert len(waits) == 1, waits  # Parse, Bind/Execute and Sync in one flush
    assert len(_prepared(store)) == 1


def test_libpq_codes_match_psycopg() -> None:
    from psycopg import pq

    from wflo.store import _pgdirect as p

    assert (p._CONNECTION_OK, p._IDLE, p._PIPELINE_OFF) == (
        pq.ConnStatus.OK,
        pq.TransactionStatus.IDLE,
        pq.PipelineStatus.OFF,
    )
    assert (p._COMMAND_OK, p._TUPLES_OK, p._PIPELINE_SYNC, p._FATAL_ERROR) == (
        pq.ExecStatus.COMMAND_OK,
        pq.ExecStatus.TUPLES_OK,
        pq.ExecStatus.PIPELINE_SYNC,
        pq.ExecStatus.FATAL_ERROR,
    )


# ----------------------------------------------------------------- write_rows (the checkpointer's writes)
ITEMS = "CREATE TABLE IF NOT EXISTS pd_items (k TEXT PRIMARY KEY, v INTEGER NOT NULL, b BYTEA)"
UPSERT = "INSERT INTO pd_items (k, v, b) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"


def _items(store: PostgresStore) -> list[tuple[Any, ...]]:
    return store.read("SELECT k, v FROM pd_items ORDER BY k")


def _waits(store: PostgresStore) -> tuple[list[str], Any]:
    """Count the flushes-and-reads (``conn.wait``) of the store's one pooled connection."""
    waits: list[str] = []
    with store._connection() as conn:
        wait = conn.wait

        def counted(gen: Any, *args: Any, **kwargs: Any) -> Any:
            waits.append(getattr(gen, "__name__", "?"))
            return wait(gen, *args, **kwargs)

        conn.wait = counted
    return waits, conn


def _rows_store(store: PostgresStore) -> PostgresStore:
    store.ensure_schema()
    store.write(lambda cur: store.execute(cur, ITEMS))
    return store


def test_write_rows_is_one_round_trip_with_the_lease_check_and_its_first_preparation(store: PostgresStore) -> None:
    _rows_store(store)
    store.create_run(run_id="r-rows", workflow="w", input={}, owner="me", lease_seconds=30)
    store.write(lambda cur: cur.execute("DEALLOCATE ALL"))
    waits, conn = _waits(store)
    try:
        store.write_rows(UPSERT, [("a", 1, b"\x00\xff"), ("b", 2, None)], fence=("r-rows", "me"), relaxed=True)
        assert len(waits) == 1, waits  # Parse x2, Bind/Execute x3 and Sync in one flush
        store.write_rows(UPSERT, [("c", 3, None)], fence=("r-rows", "me"))
        assert len(waits) == 2, waits
    finally:
        del conn.wait
    assert _items(store) == [("a", 1), ("b", 2), ("c", 3)]
    assert store.read("SELECT b FROM pd_items WHERE k = 'a'") == [(b"\x00\xff",)]
    assert store.read("SHOW synchronous_commit") == [("on",)]  # the relaxed setting did not leak
    assert len(_prepared(store)) == 3  # the fence (relaxed and not) and the upsert, once each


def test_write_rows_fenced_on_a_lost_lease_writes_nothing_and_leaves_the_connection_usable(
    store: PostgresStore,
) -> None:
    _rows_store(store)
    store.create_run(run_id="r-rows-lost", workflow="w", input={}, owner="me", lease_seconds=30)
    store.write(lambda cur: store.execute(cur, "UPDATE runs SET lease_owner = 'thief' WHERE id = 'r-rows-lost'"))
    for relaxed in (False, True):
        with pytest.raises(LeaseLost) as lost:
            store.write_rows(UPSERT, [("a", 1, None)], fence=("r-rows-lost", "me"), relaxed=relaxed)
        assert (lost.value.run_id, lost.value.owner) == ("r-rows-lost", "me")
    assert _items(store) == []
    with store._connection() as conn:
        assert alone(conn)
    store.write_rows(UPSERT, [("a", 1, None)], fence=("r-rows-lost", "thief"))
    assert _items(store) == [("a", 1)]


def test_write_rows_refuses_nul_in_text_and_keeps_psycopg_error_classes(store: PostgresStore) -> None:
    _rows_store(store)
    with pytest.raises(psycopg.DataError):  # refused before anything is sent, not cut short
        store.write_rows(UPSERT, [("a", 1, None), ("b\x00c", 2, None)])
    with pytest.raises(psycopg.errors.NotNullViolation):  # the second row fails: neither is kept
        store.write_rows(UPSERT, [("a", 1, None), ("b", None, None)])
    with pytest.raises(psycopg.errors.UndefinedTable):
        store.write_rows("INSERT INTO pd_nowhere (k) VALUES (?)", [("a",)])
    assert _items(store) == []
    store.write_rows(UPSERT, [("a", 1, None)])
    assert _items(store) == [("a", 1)]


def test_write_rows_recovers_prepared_statements_the_session_lost_or_already_had(store: PostgresStore) -> None:
    from wflo.store import _pgdirect

    _rows_store(store)
    store.create_run(run_id="r-rows-prep", workflow="w", input={}, owner="me", lease_seconds=30)
    store.write_rows(UPSERT, [("a", 1, None)], fence=("r-rows-prep", "me"))
    store.write(lambda cur: cur.execute("DEALLOCATE ALL"))  # lost: the server refuses the Bind
    store.write_rows(UPSERT, [("b", 2, None)], fence=("r-rows-prep", "me"))
    with store._connection() as conn:
        _pgdirect.PREPARED.pop(conn, None)  # already there: the server refuses the Parse
    store.write_rows(UPSERT, [("c", 3, None)], fence=("r-rows-prep", "me"))
    assert _items(store) == [("a", 1), ("b", 2), ("c", 3)]


def test_write_rows_on_a_connection_the_server_dropped_is_retried(store: PostgresStore) -> None:
    _rows_store(store)
    store.write_rows(UPSERT, [("a", 1, None)])
    with store._connection() as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(store.url, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    store.write_rows(UPSERT, [("b", 2, None)])
    assert _items(store) == [("a", 1), ("b", 2)]
    with store._connection() as conn:
        assert conn.info.backend_pid != pid


def test_write_rows_behind_a_transaction_pooler_prepares_nothing(pg_url: str) -> None:
    with open_store(f"{pg_url}&pool_size=1&pooler=transaction") as store:
        assert isinstance(store, PostgresStore)
        _rows_store(store)
        store.create_run(run_id="r-rows-pooler", workflow="w", input={}, owner="me", lease_seconds=30)
        for i in range(8):  # past psycopg's prepare threshold
            store.write_rows(UPSERT, [(f"k{i}", i, b"\x00")], fence=("r-rows-pooler", "me"), relaxed=i % 2 == 0)
        with store._connection() as conn:
            assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
        with pytest.raises(LeaseLost):
            store.write_rows(UPSERT, [("late", 0, None)], fence=("r-rows-pooler", "other"))
        assert len(_items(store)) == 8
