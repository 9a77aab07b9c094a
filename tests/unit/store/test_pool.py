"""Connections are pooled and bounded per process, held per transaction, never per thread.

Issue 14 finding 4: the store kept one connection per thread until ``close()``; LangGraph
writes checkpoints from new threads, so PostgreSQL refused clients after ~15 invokes and
SQLite had 285 connections open after 50. Here the server's own count (``pg_stat_activity``)
or the process's open descriptors on the database file must stay under the bound.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wflo.store import NewEvent, open_store

BOUND = 4
PG_URL = os.environ.get("WFLO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def bounded(store_url: str) -> Iterator[tuple[str, Callable[[], int]]]:
    """``(url with pool_size=BOUND, count of this store's open connections now)``."""
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")

        def count() -> int:
            # Each SQLite connection holds one descriptor on the database file itself.
            n = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}") == os.path.abspath(path):
                        n += 1
                except OSError:
                    continue
            return n

        yield f"{store_url}?pool_size={BOUND}", count
        return
    import psycopg

    app = f"wflo_pool_{uuid.uuid4().hex[:10]}"

    def count() -> int:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchone()
            return int(row[0]) if row else 0

    yield f"{store_url}&application_name={app}&pool_size={BOUND}", count


def _drains(count: Callable[[], int], within: float = 5.0) -> bool:
    """Whether the count reaches 0: a closed PostgreSQL connection leaves pg_stat_activity only
    once its backend has exited, a moment after the client closed it (a leak never drains)."""
    deadline = time.monotonic() + within
    while count() != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_fifty_threads_share_a_bounded_pool(bounded: tuple[str, Callable[[], int]]) -> None:
    url, count = bounded
    store = open_store(url)
    try:
        start = threading.Barrier(50)
        hold = threading.Barrier(51)
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                start.wait()
                run, _ = store.create_run(run_id=f"p{i}", workflow="w", input={"i": i}, owner=f"o{i}")
                store.append_system([NewEvent("pool.test", {"i": i})])
                assert store.get_run(run.id).status == "running"
            except BaseException as exc:
                errors.append(exc)
            finally:
                hold.wait()  # every thread stays alive while the connections are counted

        threads = [threading.Thread(target=work, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        peak = 0
        while sum(t.is_alive() for t in threads) and hold.n_waiting < 50:
            peak = max(peak, count())
        peak = max(peak, count())
        hold.wait()
        for t in threads:
            t.join()
        assert errors == []
        assert len(store.list_runs(limit=100)) == 50
        assert 1 <= peak <= BOUND, f"{peak} connections for 50 threads; the bound is {BOUND}"
    finally:
        store.close()
    assert _drains(count), "connections left open after close()"


def test_two_hundred_langgraph_invokes_stay_under_the_bound(bounded: tuple[str, Callable[[], int]]) -> None:
    pytest.importorskip("langgraph")
    from langgraph.graph import START, MessagesState, StateGraph

    from wflo.integrations.langgraph import Checkpointer

    url, count = bounded
    saver = Checkpointer(url)

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [("ai", f"seen {len(state['messages'])}")]}

    g = StateGraph(MessagesState)
    g.add_node("reply", node)
    g.add_edge(START, "reply")
    graph = g.compile(checkpointer=saver)
    peak = 0
    try:
        for i in range(200):
            out = graph.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": f"t{i % 20}"}})
            assert out["messages"][-1].content.startswith("seen")
            if i % 10 == 0:
                peak = max(peak, count())
        peak = max(peak, count())
        assert saver.get_tuple({"configurable": {"thread_id": "t3"}}) is not None
        assert 1 <= peak <= BOUND, f"{peak} connections after LangGraph invokes; the bound is {BOUND}"
    finally:
        saver.close()
    assert _drains(count), "connections left open after close()"


def test_a_pool_reopens_after_close(store_url: str) -> None:
    """``close()`` then use again (tests and the CLI reuse a store object after closing it)."""
    store = open_store(store_url)
    store.create_run(run_id="again", workflow="w", input={})
    store.close()
    assert store.get_run("again").status == "queued"
    store.close()


def test_a_bad_pool_size_is_a_one_line_error(store_url: str) -> None:
    from wflo._errors import ConfigurationError

    sep = "&" if "?" in store_url else "?"
    with pytest.raises(ConfigurationError, match="pool_size must be"):
        open_store(f"{store_url}{sep}pool_size=zero")


def test_statements_in_a_row_reuse_the_connection_returned_last(store_url: str) -> None:
    """With several connections idle, the next statement takes the one returned last (LIFO).

    psycopg_pool hands them out first in, first out: with two idle connections a run's
    creation and its end went to two server processes, each asleep since the run before
    (issue 20: waking an idle backend costs about a commit's flush on a small VM)."""
    store = open_store(store_url)
    try:
        pool = store._get_pool()
        held = [pool.get() for _ in range(3)]  # the pool grows to three connections
        for conn in held:
            pool.put(conn)
        last = _identity(held[-1])
        used = []
        for _ in range(4):
            conn = pool.get()
            used.append(_identity(conn))
            pool.put(conn)
        assert used == [last] * 4, f"connections used in a row: {used}, the last one returned: {last}"
    finally:
        store.close()


def _identity(conn: Any) -> int:
    """The server process of a PostgreSQL connection, the object of a SQLite one."""
    pgconn = getattr(conn, "pgconn", None)
    return int(pgconn.backend_pid) if pgconn is not None else id(conn)


@pytest.mark.postgres
def test_the_connection_given_back_last_skips_psycopg_pool_until_it_cannot(pg_url: str) -> None:
    """PostgreSQL (issue 20): the connection given back last waits in the store's slot, so a
    statement in a row costs no ``getconn``/``putconn`` of psycopg_pool; a broken one, one past
    its lifetime, and the slot's one on ``discard_idle`` and ``close`` go back to psycopg_pool."""
    store = open_store(pg_url)
    try:
        pool = store._get_pool()
        inner = pool._pool
        calls: list[str] = []
        getconn, putconn = inner.getconn, inner.putconn
        inner.getconn = lambda *a, **k: (calls.append("get"), getconn(*a, **k))[1]
        inner.putconn = lambda conn: (calls.append("put"), putconn(conn))[1]
        for _ in range(5):
            assert store.read("SELECT 1") == [(1,)]
        assert calls == [], calls  # each from the slot, back to it
        conn = pool.get()
        pool.put(conn, broken=True)  # closed, and back to psycopg_pool, which replaces it
        assert calls == ["put"] and conn.closed
        conn = pool.get()
        conn._expire_at = 0.0  # past its lifetime
        pool.put(conn)
        assert calls[-1] == "put" and not pool._hot
        store.read("SELECT 1")
        assert len(pool._hot) == 1
        pool.discard_idle()
        assert not pool._hot and calls[-1] == "put"
        store.read("SELECT 1")
        with store._connection() as conn:
            conn.execute("BEGIN")  # not idle: never kept in the slot
        assert not pool._hot and calls[-1] == "put"
    finally:
        store.close()
    assert not pool._hot


@pytest.mark.postgres
def test_a_thread_waiting_for_the_only_connection_gets_it_back_at_once(pg_url: str) -> None:
    """With every connection out, a thread waiting for one gets the next one given back, never
    left waiting while it sits in the store's slot (pool_size=1: it would wait the pool's
    timeout)."""
    import threading
    import time

    store = open_store(f"{pg_url}&pool_size=1")
    try:
        pool = store._get_pool()
        for delay in (0.0, 0.2):  # put before the waiter waits in psycopg_pool, and after
            conn = pool.get()
            got: list[float] = []

            def waiter(got: list[float]) -> None:
                other = pool.get()
                got.append(time.monotonic())
                pool.put(other)

            thread = threading.Thread(target=waiter, args=(got,))
            thread.start()
            time.sleep(delay)
            given = time.monotonic()
            pool.put(conn)
            thread.join(5)
            assert got and got[0] - given < 0.5, (delay, got and got[0] - given)
        assert store.read("SELECT 1") == [(1,)]
    finally:
        store.close()
