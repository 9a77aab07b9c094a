"""PostgreSQL's hot append goes straight to libpq (issue 20): ``PostgresStore._direct`` sends
the prepared ``wflo_append`` without psycopg's cursor. What that path must still do: raise
``LeaseLost`` for a lost lease, raise other errors as psycopg's classes, survive a session
that lost its prepared statements and a connection the server dropped, commit relaxed only
where it did, and prepare nothing behind a transaction pooler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from wflo._errors import LeaseLost
from wflo.store import Head, NewEvent, open_store
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
    assert sent and all("wflo_append" in s for s in sent)
    new = store.append("r-direct-fence", head, [NewEvent("step.completed", {"n": 1})], owner="a")
    assert new.seq == head.seq + 1
    assert [e.type for e in store.events("r-direct-fence")][-1] == "step.completed"
    with store._connection() as conn:  # left idle: no transaction open, nothing pending
        assert store._alone(conn)


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
        from wflo.store import _postgres

        _postgres._PREPARED.pop(conn, None)  # a connection that never prepared it
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

    from wflo.store import _postgres as p

    assert (p._CONNECTION_OK, p._IDLE, p._PIPELINE_OFF) == (
        pq.ConnStatus.OK,
        pq.TransactionStatus.IDLE,
        pq.PipelineStatus.OFF,
    )
    assert (p._COMMAND_OK, p._TUPLES_OK, p._PIPELINE_SYNC) == (
        pq.ExecStatus.COMMAND_OK,
        pq.ExecStatus.TUPLES_OK,
        pq.ExecStatus.PIPELINE_SYNC,
    )
