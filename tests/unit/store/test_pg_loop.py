"""PostgreSQL's on-loop record (issue 20): ``PostgresStore.loop_writer`` appends from the event
loop's thread, its commit awaited on the loop's reader. What that path must keep, as the sync
direct path does (``test_pg_direct``): the run's order with the store's threads, ``LeaseLost``,
psycopg's errors, NUL refused, re-preparing after ``DEALLOCATE ALL``, nothing prepared behind a
transaction pooler, a dropped connection replaced; and it must never block the loop, nor wait
for a pooled connection."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from wflo._errors import LeaseLost
from wflo.store import Head, NewEvent, open_store
from wflo.store._pgdirect import alone
from wflo.store._postgres import _END_ALONE, _STEP_ALONE, PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    with open_store(f"{pg_url}&pool_size=1") as opened:
        assert isinstance(opened, PostgresStore)
        yield opened


def _run(store: PostgresStore, run_id: str) -> Head:
    run, _ = store.create_run(run_id=run_id, workflow="w", input={}, owner="a", lease_seconds=30)
    return Head(run.last_seq, run.last_hash)


def _sent(store: PostgresStore) -> list[str]:
    sent: list[str] = []
    real = store._direct_gen

    def spy(conn: Any, stmt: Any, params: Any) -> Any:
        sent.append(stmt.sql)
        return real(conn, stmt, params)

    store._direct_gen = spy  # type: ignore[method-assign]
    return sent


async def _append(store: PostgresStore, run_id: str, head: Head, events: list[NewEvent], owner: str = "a") -> Head:
    writer = store.loop_writer(run_id)
    assert writer is not None, "no on-loop writer"
    try:
        return await writer.append(run_id, head, events, owner=owner)  # type: ignore[no-any-return]
    finally:
        writer.close()


def test_an_append_from_the_loop_is_fenced_durable_and_leaves_the_connection_idle(store: PostgresStore) -> None:
    head = _run(store, "r-loop-fence")
    sent = _sent(store)

    async def main() -> Head:
        with pytest.raises(LeaseLost):
            await _append(store, "r-loop-fence", head, [NewEvent("step.completed", {})], owner="b")
        with pytest.raises(LeaseLost):  # a stale head, even for the holder
            await _append(store, "r-loop-fence", Head(head.seq - 1, head.hash), [NewEvent("step.completed", {})])
        return await _append(store, "r-loop-fence", head, [NewEvent("step.completed", {"n": 1})])

    new = asyncio.run(main())
    assert new.seq == head.seq + 1
    assert len(sent) == 3 and all(s == _STEP_ALONE[0].sql for s in sent)  # durable, not relaxed
    assert [e.type for e in store.events("r-loop-fence")][-1] == "step.completed"
    assert store.get_run("r-loop-fence").last_seq == new.seq
    with store._connection() as conn:
        assert alone(conn)


def test_nul_is_refused_with_psycopg_error_and_nothing_is_written(store: PostgresStore) -> None:
    head = _run(store, "r-loop-nul")

    async def main() -> None:
        with pytest.raises(psycopg.DataError):
            await _append(store, "r-loop-nul", head, [NewEvent("x\x00y", {})])
        assert (await _append(store, "r-loop-nul", head, [NewEvent("x", {})])).seq == head.seq + 1

    asyncio.run(main())


def test_a_session_that_lost_its_prepared_statements_recovers(store: PostgresStore) -> None:
    head = _run(store, "r-loop-dealloc")

    async def main(head: Head) -> Head:
        head = await _append(store, "r-loop-dealloc", head, [NewEvent("a", {})])
        store.write(lambda cur: cur.execute("DEALLOCATE ALL"))  # pool_size=1: the same session
        return await _append(store, "r-loop-dealloc", head, [NewEvent("b", {})])

    head = asyncio.run(main(head))
    assert [e.type for e in store.events("r-loop-dealloc")][-2:] == ["a", "b"]
    assert store.get_run("r-loop-dealloc").last_seq == head.seq


def test_behind_a_transaction_pooler_nothing_is_prepared(pg_url: str) -> None:
    with open_store(f"{pg_url}&pool_size=1&pooler=transaction") as store:
        assert isinstance(store, PostgresStore)
        head = _run(store, "r-loop-pooler")
        sent = _sent(store)

        async def main(head: Head) -> Head:
            for i in range(8):
                head = await _append(store, "r-loop-pooler", head, [NewEvent(f"e{i}", {"i": i})])
            with pytest.raises(LeaseLost):
                await _append(store, "r-loop-pooler", head, [NewEvent("late", {})], owner="b")
            return head

        asyncio.run(main(head))
        assert len(sent) == 9
        with store._connection() as conn:
            assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0


def test_a_connection_the_server_dropped_is_dropped_and_the_append_made_once(store: PostgresStore) -> None:
    head = _run(store, "r-loop-drop")
    with store._connection() as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(store.url, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    head = asyncio.run(_append(store, "r-loop-drop", head, [NewEvent("b", {})]))
    assert [e.type for e in store.events("r-loop-drop")].count("b") == 1
    assert store.get_run("r-loop-drop").last_seq == head.seq
    with store._connection() as conn:
        assert conn.info.backend_pid != pid


def test_no_writer_while_the_run_has_work_on_the_store_threads_and_none_runs_past_one(store: PostgresStore) -> None:
    """The order of a run's writes: the loop writes only when nothing of the run is queued or
    running on the store's threads, and a job of the run submitted while the loop writes waits
    for it."""
    head = _run(store, "r-loop-order")
    gate = threading.Event()
    order: list[str] = []

    def blocking() -> None:
        gate.wait(5)
        order.append("thread-1")

    async def main() -> None:
        busy = asyncio.ensure_future(store.off_loop(blocking, key="r-loop-order"))
        await asyncio.sleep(0.05)
        assert store.loop_writer("r-loop-order") is None  # the run's job is running there
        gate.set()
        await busy
        writer = store.loop_writer("r-loop-order")
        assert writer is not None
        try:
            later = asyncio.ensure_future(store.off_loop(order.append, "thread-2", key="r-loop-order"))
            await writer.append("r-loop-order", head, [NewEvent("a", {})], owner="a")
            order.append("loop")
            await asyncio.sleep(0.05)
            assert not later.done(), "a job of the run ran while the loop held its place"
        finally:
            writer.close()
        await later

    asyncio.run(main())
    assert order == ["thread-1", "loop", "thread-2"]


def test_no_writer_without_an_idle_connection_and_no_wait_for_one(store: PostgresStore) -> None:
    _run(store, "r-loop-busy")
    taken = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with store._connection():
            taken.set()
            done.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(5)
        t0 = time.perf_counter()
        assert store.loop_writer("r-loop-busy") is None
        assert time.perf_counter() - t0 < 0.05
        assert store.loop_writer("r-loop-busy") is None  # the place was given back too
    finally:
        done.set()
        holder.join()
    writer = store.loop_writer("r-loop-busy")
    assert writer is not None
    writer.close()


def test_the_loop_keeps_running_while_the_server_delays_the_commit(store: PostgresStore) -> None:
    """A trigger makes the server take 0.4 s over the append: a ticker on the same loop ticks
    all along (a blocking read on the loop's thread would stop it)."""
    head = _run(store, "r-loop-slow")
    store.write(
        lambda cur: cur.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.type = 'slow' THEN PERFORM pg_sleep(0.4); END IF; RETURN NEW; END $$;"
            "CREATE TRIGGER slow BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow()"
        )
    )
    ticks: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    async def main() -> tuple[float, float]:
        stop = asyncio.Event()
        task = asyncio.ensure_future(ticker(stop))
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        await _append(store, "r-loop-slow", head, [NewEvent("slow", {})])
        t1 = time.perf_counter()
        stop.set()
        await task
        return t0, t1

    t0, t1 = asyncio.run(main())
    assert t1 - t0 >= 0.35
    during = [t for t in ticks if t0 <= t <= t1]
    assert len(during) >= 10, f"the loop stalled: {len(during)} ticks in {t1 - t0:.2f} s"
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert max(gaps) < 0.2
    assert [e.type for e in store.events("r-loop-slow")][-1] == "slow"


def test_a_cancelled_task_still_commits_its_append(store: PostgresStore) -> None:
    """Like ``off_loop``: the append runs to its end, the cancellation is raised after."""
    head = _run(store, "r-loop-cancel")
    store.write(
        lambda cur: cur.execute(
            "CREATE FUNCTION slow2() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.2); RETURN NEW; END $$;"
            "CREATE TRIGGER slow2 BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow2()"
        )
    )

    async def main() -> None:
        task = asyncio.ensure_future(_append(store, "r-loop-cancel", head, [NewEvent("a", {})]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert store.get_run("r-loop-cancel").last_seq == head.seq + 1
    with store._connection() as conn:
        assert alone(conn)


def test_an_append_finished_on_the_loop_thread_gives_its_outcome_to_the_awaiting_task(store: PostgresStore) -> None:
    """A sync append on the loop's thread behind one in flight (``RunContext._land``): the
    append is finished there, blocking, while the server delays its commit; the task awaiting
    it takes the same head (nothing read twice), and the connection is back in the pool (of
    one) at once, so a sync append on the same thread gets it."""
    head = _run(store, "r-loop-finish")
    store.write(
        lambda cur: cur.execute(
            "CREATE FUNCTION slow3() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.type = 'slow' THEN PERFORM pg_sleep(0.3); END IF; RETURN NEW; END $$;"
            "CREATE TRIGGER slow3 BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow3()"
        )
    )

    async def main() -> tuple[Head, Head, Head]:
        writer = store.loop_writer("r-loop-finish")
        assert writer is not None
        pending = writer.append("r-loop-finish", head, [NewEvent("slow", {})], owner="a")
        awaited = asyncio.ensure_future(pending.wait())
        await asyncio.sleep(0.05)  # the task waits on the loop's reader now
        finished = pending.finish()
        after = store.append("r-loop-finish", finished, [NewEvent("b", {})], owner="a")
        try:
            return finished, await awaited, after
        finally:
            writer.close()

    finished, awaited, after = asyncio.run(main())
    assert finished == awaited == Head(head.seq + 1, finished.hash)
    assert after.seq == head.seq + 2
    assert [e.type for e in store.events("r-loop-finish")][-2:] == ["slow", "b"]


def test_an_append_resumes_its_task_in_the_turn_its_answer_is_read(store: PostgresStore) -> None:
    """The socket's reader callback reads the answer and resumes the awaiting task there
    (``LoopWaiter``): no turn of the loop between (one before: the task was resumed by a
    future's callback, scheduled for the next turn)."""
    head = _run(store, "r-loop-turns")

    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        turns = [0]
        ticking = [True]

        def tick() -> None:
            if ticking[0]:
                turns[0] += 1
                loop.call_soon(tick)

        read_at: list[int] = []
        real = loop.add_reader

        def add_reader(fd: Any, callback: Any, *args: Any) -> None:
            def reading(*a: Any) -> None:
                read_at.append(turns[0])
                callback(*a)

            real(fd, reading, *args)

        loop.add_reader = add_reader  # type: ignore[method-assign]
        loop.call_soon(tick)
        try:
            await _append(store, "r-loop-turns", head, [NewEvent("step.completed", {})])
        finally:
            ticking[0] = False
            del loop.add_reader
        return read_at, turns[0]

    read_at, resumed_at = asyncio.run(main())
    assert read_at, "the answer was never read on the loop's reader"
    assert resumed_at == read_at[-1]


def test_an_append_on_asyncio_s_loop_watches_its_socket_on_the_selector_alone(store: PostgresStore) -> None:
    """On asyncio's own selector loop an append's answer is awaited with one ``register`` and
    one ``unregister`` of its socket on the loop's selector, and none of ``add_reader``'s work
    around them (issue 20: the transport check and the selector's missing key, ~51 K
    instructions a pair, four ``KeyError`` raised and caught): the loop's transport check is
    never asked. The answer still resumes the task in the turn it is read, and the socket is
    left unwatched."""
    head = _run(store, "r-loop-selector")

    async def main() -> tuple[Head, list[str], int]:
        loop = asyncio.get_running_loop()
        selector = loop._selector  # type: ignore[attr-defined]
        calls: list[str] = []
        checks = [0]
        real_register, real_unregister = selector.register, selector.unregister
        real_check = loop._ensure_fd_no_transport  # type: ignore[attr-defined]

        def register(fileobj: Any, events: int, data: Any = None) -> Any:
            calls.append("register")
            return real_register(fileobj, events, data)

        def unregister(fileobj: Any) -> Any:
            calls.append("unregister")
            return real_unregister(fileobj)

        def check(fd: Any) -> Any:
            checks[0] += 1
            return real_check(fd)

        selector.register, selector.unregister = register, unregister
        loop._ensure_fd_no_transport = check  # type: ignore[attr-defined]
        try:
            new = await _append(store, "r-loop-selector", head, [NewEvent("step.completed", {})])
            return new, calls, checks[0] + len(selector.get_map())
        finally:
            del selector.register, selector.unregister, loop._ensure_fd_no_transport  # type: ignore[attr-defined]

    new, calls, left = asyncio.run(main())
    assert new.seq == head.seq + 1
    assert calls == ["register", "unregister"]
    assert left == 1  # no transport check; the selector watches the loop's self-pipe alone


async def _end(store: PostgresStore, run_id: str, head: Head, output: Any, owner: str = "a") -> Head:
    writer = store.loop_writer(run_id)
    assert writer is not None, "no on-loop writer"
    try:
        events = [NewEvent("run.completed", {"output": output})]
        return await writer.append_end(  # type: ignore[no-any-return]
            run_id, head, events, owner=owner, status="succeeded", output=output
        )
    finally:
        writer.close()


def test_a_runs_end_from_the_loop_is_fenced_durable_ends_the_run_and_notifies(store: PostgresStore) -> None:
    head = _run(store, "r-loop-end")
    sent = _sent(store)
    with psycopg.connect(store.url, autocommit=True) as listener:
        listener.execute("LISTEN wflo_runs")
        with pytest.raises(LeaseLost):
            asyncio.run(_end(store, "r-loop-end", head, {"v": 1}, owner="b"))
        assert store.get_run("r-loop-end").status == "running"
        new = asyncio.run(_end(store, "r-loop-end", head, {"v": 1}))
        heard = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert heard == ["r-loop-end"]
    assert len(sent) == 2 and all(s == _END_ALONE[0].sql for s in sent)  # the sync path's end: durable, never relaxed
    run = store.get_run("r-loop-end")
    assert (run.status, run.lease_owner, run.last_seq) == ("succeeded", None, new.seq)
    assert run.done and run.output is not None
    assert [e.type for e in store.events("r-loop-end")][-1] == "run.completed"


def test_a_runs_end_on_a_dropped_connection_is_made_once_through_the_store(store: PostgresStore) -> None:
    head = _run(store, "r-loop-end-drop")
    with store._connection() as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(store.url, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    new = asyncio.run(_end(store, "r-loop-end-drop", head, 2))
    assert [e.type for e in store.events("r-loop-end-drop")].count("run.completed") == 1
    run = store.get_run("r-loop-end-drop")
    assert (run.status, run.last_seq) == ("succeeded", new.seq)


async def _create(store: PostgresStore, run_id: str) -> Any:
    writer = store.loop_writer(run_id)
    assert writer is not None, "no on-loop writer"
    try:
        return await writer.create_run(
            run_id=run_id, workflow="w", input={"args": [1]}, options={"serializer": "json"}, tenant=None,
            owner="a", lease_seconds=30,
        )  # fmt: skip
    finally:
        writer.close()


def test_a_run_created_from_the_loop_is_the_direct_paths_run_and_idempotent(store: PostgresStore) -> None:
    record, created = asyncio.run(_create(store, "r-loop-new"))
    assert created and (record.status, record.lease_owner, record.attempts) == ("running", "a", 1)
    stored = store.get_run("r-loop-new")
    assert (stored.last_seq, stored.last_hash, stored.input) == (record.last_seq, record.last_hash, record.input)
    assert stored.lease_expires_at == record.lease_expires_at
    assert [e.type for e in store.events("r-loop-new")] == ["run.created", "run.started"]
    again, created = asyncio.run(_create(store, "r-loop-new"))
    assert not created and again.id == "r-loop-new" and again.last_seq == record.last_seq


def test_a_run_created_on_a_dropped_connection_is_made_once_through_the_store(store: PostgresStore) -> None:
    with store._connection() as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(store.url, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    record, _ = asyncio.run(_create(store, "r-loop-new-drop"))
    assert record.id == "r-loop-new-drop" and record.lease_owner == "a"
    assert [e.type for e in store.events("r-loop-new-drop")] == ["run.created", "run.started"]
