"""How many round trips the store makes, pinned so that they cannot creep back (issue 20).

On PostgreSQL every statement the client waits for is a network round trip. Round trips are
counted at the driver: each time psycopg waits for the server (a statement outside a
pipeline, a pipeline's sync or a fetch that forces one). On SQLite statements are counted
with the connection's trace callback.

Also here: the single-statement paths keep their promises (a fenced append that loses its
lease writes nothing, its ops included; a run created twice at once is created once).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest

import wflo
from wflo import _config as config
from wflo._errors import LeaseLost
from wflo.engine._serialize import encode
from wflo.store import Head, NewEvent, Store, open_store
from wflo.testing import LLMServer, Reply

_SYNCS = {"_fetch_gen", "_sync_gen", "_exit_gen"}


class Counter:
    """Round trips (PostgreSQL) or statements (SQLite) made through one store's pool."""

    def __init__(self) -> None:
        self.trips = 0
        self.statements: list[str] = []
        self.on = False
        self.thread: int | None = None  # count only this thread's (None: every thread's)


@contextmanager
def counting(store: Store) -> Iterator[Counter]:
    counter = Counter()
    pool = store._get_pool()
    get = pool.get

    def counted_get() -> Any:
        conn = get()
        if store.dialect == "sqlite":

            def trace(sql: str) -> None:
                # A statement that fires triggers is traced once more per trigger program: the
                # same text again at once. Counted once.
                if counter.on and not (counter.statements and counter.statements[-1] == sql):
                    counter.statements.append(sql)

            conn.set_trace_callback(trace)
            return conn
        if getattr(conn, "_wflo_counted", None) is not counter:
            wait = type(conn).wait.__get__(conn)

            def counted_wait(gen: Any, *args: Any, **kwargs: Any) -> Any:
                name = getattr(gen, "__name__", "")
                mine = counter.thread is None or counter.thread == threading.get_ident()
                if counter.on and mine and (name in _SYNCS or (conn._pipeline is None and name != "_enter_gen")):
                    counter.trips += 1
                if counter.on and name == "_execute_gen":  # one per statement, pipelined or not
                    counter.statements.append(str(gen.gi_frame.f_locals.get("query", "")))
                return wait(gen, *args, **kwargs)

            conn.wait = counted_wait
            conn._wflo_counted = counter
        return conn

    pool.get = counted_get
    direct = getattr(store, "_direct", None)
    if direct is not None:  # statements sent straight to libpq (PostgreSQL's hot append)

        def counted_direct(conn: Any, stmt: Any, params: Any) -> Any:
            mine = counter.thread is None or counter.thread == threading.get_ident()
            if counter.on and mine:
                counter.statements.append(stmt.sql)
            return direct(conn, stmt, params)

        store._direct = counted_direct  # type: ignore[attr-defined]
    try:
        yield counter
    finally:
        pool.get = get
        if direct is not None:
            del store._direct  # type: ignore[attr-defined]


@pytest.fixture
def wflo_store(store_url: str) -> Iterator[Store]:
    config.configure(database=store_url, lease_seconds=5.0, poll_interval=0.05)
    try:
        yield config.get_store()
    finally:
        config.reset()


def _measure(store: Store, fn: Any) -> Counter:
    fn()  # warm: the pool, prepared caches, lazy imports
    with counting(store) as counter:
        counter.on = True
        fn()
        counter.on = False
    return counter


@wflo.workflow(name="tests.roundtrips.empty")
def empty() -> int:
    return 1


@wflo.step
def one_step() -> int:
    return 2


@wflo.workflow(name="tests.roundtrips.steps")
def three_steps() -> int:
    return one_step() + one_step() + one_step()


@pytest.mark.postgres
def test_an_empty_workflow_is_two_round_trips_on_postgres(pg_url: str) -> None:
    config.configure(database=pg_url, lease_seconds=5.0)
    try:
        counter = _measure(config.get_store(), empty)
        # The run with its first events in one statement; its end in one more.
        assert counter.trips == 2
    finally:
        config.reset()


@pytest.mark.postgres
def test_an_empty_workflow_is_two_statements_on_postgres(pg_url: str) -> None:
    """A fresh run that kept no payload has nothing to drop at its end: the end is the fenced
    append alone, committed on its own (no BEGIN, no DELETE, no COMMIT beside it)."""
    config.configure(database=pg_url, lease_seconds=5.0)
    try:
        counter = _measure(config.get_store(), empty)
        assert len(counter.statements) == 2, counter.statements
        assert "INSERT INTO runs" in counter.statements[0]
        assert "UPDATE runs" in counter.statements[1] and "pg_notify" in counter.statements[1]  # the end's (_END)
    finally:
        config.reset()


@wflo.workflow(name="tests.roundtrips.aempty")
async def aempty() -> int:
    return 1


@pytest.mark.postgres
def test_an_async_empty_workflow_sends_the_sync_ones_two_statements_on_postgres(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync and the async empty run make the same two round trips (sweep-pgempty: a sync
    empty run read ~200 µs slower than an async one in bench/engine.py; the cause was the
    benchmark's order, not an extra statement): the run with its first events, relaxed, then
    its durable end. The async run sends both from its event loop, none through the pool's
    threads."""
    from wflo.engine import _executor
    from wflo.store._pgdirect import LoopWriter

    monkeypatch.setattr(_executor, "_guard_factories", [])  # an extension's guards would be built at the start
    sent: list[str] = []
    real = LoopWriter._send

    def spy(self: Any, stmt: Any, params: Any) -> Any:
        sent.append(stmt.sql)
        return real(self, stmt, params)

    monkeypatch.setattr(LoopWriter, "_send", spy)
    config.configure(database=pg_url, lease_seconds=5.0)
    try:
        store = config.get_store()
        synced = _measure(store, empty)
        loop = asyncio.new_event_loop()
        try:
            counter = _measure(store, lambda: loop.run_until_complete(aempty.arun()))
        finally:
            loop.close()
        assert synced.trips == 2 and len(synced.statements) == 2, synced.statements
        assert counter.trips == 0 and counter.statements == []  # nothing through the pool's threads
        assert sent[-2:] == synced.statements  # the same two statements, from the loop
        assert len(sent) == 4  # the warm run's two, then the measured run's two
    finally:
        config.reset()


@pytest.mark.postgres
def test_a_resumed_run_still_drops_its_payloads_at_its_end(pg_url: str) -> None:
    """Only a run's first execution may skip the drop: a resumed one may hold payloads an
    earlier execution kept, and its end deletes them in the same transaction."""
    config.configure(database=pg_url, lease_seconds=5.0)
    try:
        store = config.get_store()
        owner = "host:1:gone"
        no_args = encode({"args": [], "kwargs": {}}, serializer=empty.serializer, step=empty.name, what="input")
        store.create_run(run_id="r-resumed-drop", workflow=empty.name, input=no_args, owner=owner)
        store.write(
            lambda cur: store.execute(
                cur, "INSERT INTO payloads (run_id, call_id, body) VALUES (?, ?, ?)", ("r-resumed-drop", "1", "x")
            )
        )
        store.release("r-resumed-drop", owner)
        with counting(store) as counter:
            counter.on = True
            assert empty.options(id="r-resumed-drop").run() == 1
            counter.on = False
        assert any("DELETE FROM payloads" in s for s in counter.statements), counter.statements
        assert store.read("SELECT count(*) FROM payloads WHERE run_id = ?", ("r-resumed-drop",))[0][0] == 0
    finally:
        config.reset()


@pytest.mark.postgres
def test_each_step_is_one_round_trip_on_postgres(pg_url: str) -> None:
    config.configure(database=pg_url, lease_seconds=5.0)
    try:
        counter = _measure(config.get_store(), three_steps)
        assert counter.trips == 2 + 3
    finally:
        config.reset()


def test_an_empty_workflow_writes_few_statements_on_sqlite(sqlite_url: str) -> None:
    config.configure(database=sqlite_url, lease_seconds=5.0)
    try:
        counter = _measure(config.get_store(), empty)
        # BEGIN, INSERT run RETURNING, INSERT 2 events (traced once per row), COMMIT; BEGIN,
        # UPDATE, INSERT event, COMMIT (a fresh run that kept no payload has none to delete).
        # Nothing read back.
        assert len(counter.statements) <= 9, counter.statements
        assert not any("payloads" in s for s in counter.statements), counter.statements
        assert not any(s.lstrip().upper().startswith("SELECT") for s in counter.statements), counter.statements
    finally:
        config.reset()


def test_a_step_is_one_plain_update_and_one_insert_on_sqlite(sqlite_url: str) -> None:
    """A step's append: BEGIN, the fenced head move without RETURNING (which cost ~11 µs
    against ~2 µs in a step's transaction), the event's INSERT, COMMIT; nothing read back
    (the cancel request is read only when the run was asked to cancel)."""
    config.configure(database=sqlite_url, lease_seconds=5.0)
    try:
        store = config.get_store()
        steps = _measure(store, three_steps).statements
        kinds = " ".join(s.split()[0].upper() for s in steps)
        assert " BEGIN UPDATE INSERT COMMIT" * 3 in " " + kinds, steps
        assert not any(s.upper().startswith(("SELECT", "UPDATE RUNS SET LAST_SEQ")) and "RETURNING" in s
                       for s in steps), steps  # fmt: skip
        assert not any(s.upper().startswith("SELECT") for s in steps), steps
    finally:
        config.reset()


@pytest.mark.postgres
def test_a_guarded_llm_call_is_two_round_trips_on_postgres(pg_url: str) -> None:
    config.configure(database=pg_url, lease_seconds=5.0)
    with LLMServer() as llm:
        llm.responder = lambda r: Reply("fine", output_tokens=2)
        client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
        trips: list[int] = []
        store = config.get_store()

        def call(i: int) -> None:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=20
            )

        @wflo.workflow(name="tests.roundtrips.guarded", budget=wflo.Budget(usd="10"))
        def guarded() -> None:
            call(0)  # warm
            with counting(store) as counter:
                for i in range(1, 4):
                    counter.on, counter.trips = True, 0
                    call(i)
                    counter.on = False
                    trips.append(counter.trips)

        try:
            guarded()
        finally:
            client.close()
            config.reset()
    # The reservation (wflo_reserve); the call's event with its settlement (pipelined).
    assert trips == [2, 2, 2]


def test_an_append_that_lost_its_lease_writes_nothing_ops_included(wflo_store: Store) -> None:
    store = wflo_store
    run, _ = store.create_run(run_id="r-fence", workflow="w", input={}, owner="a", lease_seconds=30)
    head = Head(run.last_seq, run.last_hash)
    answers: list[Any] = []

    def op(cur: Any) -> Any:
        store.execute(cur, "INSERT INTO payloads (run_id, call_id, body) VALUES (?, ?, ?)", ("r-fence", "1", "x"))
        return lambda: answers.append("then")

    with pytest.raises(LeaseLost):
        store.append("r-fence", head, [NewEvent("call.completed", {"call": "1"})], owner="b", ops=[op])
    assert answers == []
    assert store.read("SELECT count(*) FROM payloads WHERE run_id = ?", ("r-fence",))[0][0] == 0
    assert [e.type for e in store.events("r-fence")] == ["run.created", "run.started"]
    # The connection is fine afterwards; the holder appends, its op's answer is read after commit.
    new = store.append("r-fence", head, [NewEvent("call.completed", {"call": "1"})], owner="a", ops=[op])
    assert new.seq == head.seq + 1
    assert answers == ["then"]
    assert store.read("SELECT count(*) FROM payloads WHERE run_id = ?", ("r-fence",))[0][0] == 1
    # A stale head is refused too, even by the holder.
    with pytest.raises(LeaseLost):
        store.append("r-fence", head, [NewEvent("call.failed", {"call": "2"})], owner="a")


def test_an_ops_error_rolls_the_append_back(wflo_store: Store) -> None:
    store = wflo_store
    run, _ = store.create_run(run_id="r-op", workflow="w", input={}, owner="a", lease_seconds=30)
    head = Head(run.last_seq, run.last_hash)

    def bad(cur: Any) -> None:
        store.execute(cur, "INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(Exception, match="no_such_table"):
        store.append("r-op", head, [NewEvent("x", {})], owner="a", ops=[bad])
    assert store.get_run("r-op").last_seq == head.seq
    assert store.append("r-op", head, [NewEvent("x", {})], owner="a").seq == head.seq + 1


def test_finish_wait_and_release_through_the_one_statement_append(wflo_store: Store) -> None:
    store = wflo_store
    run, _ = store.create_run(run_id="r-proj", workflow="w", input={}, owner="a", lease_seconds=30)
    head = store.append(
        "r-proj", Head(run.last_seq, run.last_hash), [NewEvent("run.waiting", {})], owner="a",
        status="waiting", release=True, wake_at="2999-01-01T00:00:00.000000Z",
    )  # fmt: skip
    got = store.get_run("r-proj")
    assert (got.status, got.lease_owner, got.lease_expires_at, got.wake_at) == (
        "waiting", None, None, "2999-01-01T00:00:00.000000Z",
    )  # fmt: skip
    # An earlier wake-up wins over a later one.
    store.set_wake("r-proj", "2000-01-01T00:00:00.000000Z")
    head = store.append("r-proj", head, [NewEvent("x", {})], owner=None, wake_at="2999-01-01T00:00:00.000000Z")
    assert store.get_run("r-proj").wake_at == "2000-01-01T00:00:00.000000Z"
    store.append("r-proj", head, [NewEvent("run.failed", {})], owner=None, status="failed",
                 error={"type": "E"}, finish=True)  # fmt: skip
    got = store.get_run("r-proj")
    assert (got.status, got.error, got.output, got.wake_at) == ("failed", {"type": "E"}, None, None)
    assert got.finished_at is not None


def test_a_run_created_at_once_by_many_threads_is_created_once(store_url: str) -> None:
    with open_store(store_url) as store:
        results: list[tuple[Any, bool]] = []
        barrier = threading.Barrier(6)

        def go(i: int) -> None:
            barrier.wait()
            results.append(store.create_run(run_id="r-once", workflow="w", input={"i": i}, owner=f"o{i}"))

        threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(created for _, created in results) == [False] * 5 + [True]
        winner = next(run for run, created in results if created)
        assert {run.id for run, _ in results} == {"r-once"}
        assert all(run.lease_owner == winner.lease_owner for run, _ in results)
        assert [e.type for e in store.events("r-once")] == ["run.created", "run.started"]
        assert winner.lease_expires_at is not None and winner.lease_expires_at > winner.created_at


def test_a_queued_run_has_no_lease(store_url: str) -> None:
    with open_store(store_url) as store:
        run, created = store.create_run(run_id="r-q", workflow="w", input=[1])
        assert created and (run.status, run.lease_owner, run.lease_expires_at, run.attempts) == (
            "queued", None, None, 0,
        )  # fmt: skip
        assert run == store.get_run("r-q")


def test_ops_that_read_answers_see_them_inside_the_append(wflo_store: Store) -> None:
    """An op that decides on ``rowcount`` or a fetched row sees the real value, pipelined or not."""
    store = wflo_store
    run, _ = store.create_run(run_id="r-answers", workflow="w", input={}, owner="a", lease_seconds=30)
    seen: list[Any] = []

    def op(cur: Any) -> None:
        store.execute(cur, "DELETE FROM payloads WHERE run_id = ?", ("r-answers",))
        seen.append(cur.rowcount)
        store.execute(cur, "INSERT INTO payloads (run_id, call_id, body) VALUES (?, ?, ?)", ("r-answers", "1", "x"))
        store.execute(cur, "DELETE FROM payloads WHERE run_id = ?", ("r-answers",))
        seen.append(cur.rowcount)
        seen.append(store.execute(cur, "SELECT COUNT(*) FROM payloads WHERE run_id = ?", ("r-answers",)).fetchone()[0])

    store.append("r-answers", Head(run.last_seq, run.last_hash), [NewEvent("x", {})], owner="a", ops=[op])
    assert seen == [0, 1, 0]


def _waiting(store: Store, run_id: str, wake_at: str = "2000-01-01T00:00:00.000000Z", **kw: Any) -> None:
    """A run that waited and whose wake-up has come (as after an approval decision)."""
    run, _ = store.create_run(run_id=run_id, workflow="w", input={}, owner="x", lease_seconds=30, **kw)
    store.append(run_id, Head(run.last_seq, run.last_hash), [NewEvent("run.waiting", {})], owner="x",
                 status="waiting", release=True, wake_at=wake_at)  # fmt: skip


def _trips(store: Store, fn: Any) -> tuple[int, Any]:
    with counting(store) as counter:
        counter.on = True
        got = fn()
        counter.on = False
    return counter.trips, got


@pytest.mark.postgres
def test_a_claim_is_one_round_trip_and_a_wake_up_two_on_postgres(pg_url: str) -> None:
    """Issue 20: a woken run's claim was six round trips (clock, searches, update, commit)."""
    from wflo.store import QueueRule

    with open_store(pg_url) as store:
        rules = [QueueRule("q", concurrency=2, per_partition=1, rate_limit=(50, 1.0))]
        for i in range(6):
            _waiting(store, f"plain-{i}", f"2000-01-01T00:00:0{i}.000000Z")
            _waiting(store, f"inq-{i}", "2001-01-01T00:00:00.000000Z", queue="q", partition_key=f"k{i}")
        _waiting(store, "warm", "1999-01-01T00:00:00.000000Z")
        store.claim_next("warm", 30, ["w"])  # warm: the pool, the prepared statements
        # A run of no queue: the searches (one message), then the update with the commit.
        for i in range(3):
            trips, got = _trips(store, lambda i=i: store.claim_next(f"o{i}", 30, ["w"], rules))
            assert trips == 2 and got is not None and got.id == f"plain-{i}" and got.status == "running"
        # A run of a limited queue: its lock and counts in one round trip more.
        store.write(lambda cur: store.execute(cur, "UPDATE runs SET wake_at = NULL WHERE id LIKE ?", ("plain-%",)))
        trips, got = _trips(store, lambda: store.claim_next("oq", 30, ["w"], rules))
        assert trips == 3 and got is not None and got.id == "inq-0"
        # Nothing to claim: the searches, the queued runs of no queue and of "q", the commit.
        store.write(lambda cur: store.execute(cur, "UPDATE runs SET wake_at = NULL"))
        trips, got = _trips(store, lambda: store.claim_next("idle", 30, ["w"], rules))
        assert got is None and trips <= 5
        # A direct claim: the update, the read and the commit in one message.
        trips, got = _trips(store, lambda: store.claim("plain-5", "direct", 30))
        assert trips == 1 and got.lease_owner == "direct" and got.status == "running"
        assert got.lease_expires_at is not None and got.lease_expires_at > got.updated_at
        # Held by another: not taken, the row as it is comes back (still one round trip).
        trips, got = _trips(store, lambda: store.claim("plain-5", "thief", 30))
        assert trips == 1 and got.lease_owner == "direct"


@pytest.mark.postgres
def test_a_heartbeat_is_one_round_trip_on_postgres(pg_url: str) -> None:
    """A beat's update, its answer and the commit go in one message, so a worker frozen in the
    middle of a beat (SIGSTOP) leaves no transaction open on the server holding its runs' rows:
    claims skip locked rows, and nobody could take those runs back until it thawed."""
    with open_store(pg_url) as store:
        for rid, owner in (("hb-1", "me"), ("hb-2", "me"), ("hb-3", "other")):
            store.create_run(run_id=rid, workflow="w", input={}, owner=owner, lease_seconds=30)
        store.request_cancel("hb-2")
        store.heartbeat("me", ["hb-1"], 30)  # warm
        before = store.get_run("hb-1").lease_expires_at
        trips, held = _trips(store, lambda: store.heartbeat("me", ["hb-1", "hb-2", "hb-3"], 600))
        assert trips == 1
        assert held == {"hb-1": False, "hb-2": True}  # not hb-3: another's lease is not renewed
        after = store.get_run("hb-1").lease_expires_at
        assert before is not None and after is not None and after > before
        assert store.get_run("hb-3").lease_owner == "other"


def test_a_heartbeat_renews_only_our_leases(store_url: str) -> None:
    with open_store(store_url) as store:
        store.create_run(run_id="hb-a", workflow="w", input={}, owner="me", lease_seconds=1)
        store.create_run(run_id="hb-b", workflow="w", input={}, owner="other", lease_seconds=1)
        assert store.heartbeat("me", ["hb-a", "hb-b", "hb-missing"], 600) == {"hb-a": False}
        a, b = store.get_run("hb-a"), store.get_run("hb-b")
        assert a.lease_expires_at is not None and b.lease_expires_at is not None
        assert a.lease_expires_at > b.lease_expires_at
        assert store.heartbeat("me", [], 600) == {}


# Text that an array literal must not misread: quotes, backslashes, braces, commas, blanks,
# the word NULL, an empty string, and characters beyond ASCII.
_AWKWARD = ['"', "\\", '\\"', "{a,b}", "a, b", " ", "NULL", "null", "", "é✓", '{"x": "\\\\n"}', "\t\n"]


def test_awkward_text_reaches_the_journal_exactly(store_url: str) -> None:
    """The run's first events and each append are sent as array parameters; what is read
    back is what was written, byte for byte, and the hash chain verifies."""
    from wflo.audit import verify_all

    store = open_store(store_url)
    try:
        _run, created = store.create_run(
            run_id='r-awk"\\{,}', workflow="w", input="{}", owner="o", event_data={"texts": _AWKWARD}
        )
        assert created
        head = Head(_run.last_seq, _run.last_hash)
        sent = [NewEvent(f"note.{i}", {"text": text, "all": _AWKWARD}) for i, text in enumerate(_AWKWARD)]
        head = store.append(_run.id, head, sent, owner="o")
        store.append(_run.id, head, [NewEvent("run.completed", {"output": "\\\"{}"})], owner="o",
                     status="succeeded", output='\\"{}', finish=True)  # fmt: skip
        got = store.events(_run.id)
        assert got[0].data["texts"] == _AWKWARD
        assert [(e.type, e.data) for e in got[2:-1]] == [(e.type, e.data) for e in sent]
        assert got[-1].data == {"output": '\\"{}'}
        assert store.get_run(_run.id).output == '\\"{}'  # the run's row says what its end event says
        assert all(r.ok for r in verify_all(store))
    finally:
        store.close()


def test_a_woken_claim_takes_only_a_due_waiting_run(store_url: str) -> None:
    """``claim(woken=True)``: what a script waiting for its run's decision calls. A run whose
    wake-up is still to come, or that another holds or that ended, is returned untouched."""
    with open_store(store_url) as store:
        _waiting(store, "due")
        _waiting(store, "later", "2999-01-01T00:00:00.000000Z")
        got = store.claim("later", "me", 30, woken=True)
        assert got.status == "waiting" and got.lease_owner is None and got.attempts == 1
        got = store.claim("due", "me", 30, woken=True)
        assert got.status == "running" and got.lease_owner == "me" and got.wake_at is None
        got = store.claim("due", "other", 30, woken=True)
        assert got.lease_owner == "me"  # not waiting any more: not another's to take
        # Without ``woken`` the claim takes a waiting run whatever its wake-up time (recovery).
        assert store.claim("later", "me", 30).lease_owner == "me"


@pytest.mark.postgres
def test_a_woken_claim_is_one_round_trip_on_postgres(pg_url: str) -> None:
    with open_store(pg_url) as store:
        _waiting(store, "warm")
        store.claim("warm", "me", 30, woken=True)
        _waiting(store, "due")
        _waiting(store, "later", "2999-01-01T00:00:00.000000Z")
        trips, got = _trips(store, lambda: store.claim("later", "me", 30, woken=True))
        assert trips == 1 and got.status == "waiting"
        trips, got = _trips(store, lambda: store.claim("due", "me", 30, woken=True))
        assert trips == 1 and got.lease_owner == "me"


def test_a_woken_claim_of_a_run_not_due_writes_nothing_on_sqlite(sqlite_url: str) -> None:
    """On SQLite a claim takes the database's write lock: a run not due is only read."""
    with open_store(sqlite_url) as store:
        _waiting(store, "later", "2999-01-01T00:00:00.000000Z")
        store.claim("later", "me", 30, woken=True)
        with counting(store) as counter:
            counter.on = True
            store.claim("later", "me", 30, woken=True)
            counter.on = False
        assert counter.statements and all(s.lstrip().upper().startswith("SELECT") for s in counter.statements)


@pytest.mark.postgres
def test_a_decision_is_two_round_trips_on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: a decision's transaction was 11 round trips (each lock, the clock, the
    has-voted check, the vote, the tally, the request, the wake-up, the commit). Now the locks,
    the votes so far and the store's clock (for the deadline) go in one message, the writes,
    the wake-up and the commit in another. ``plain``: the default deadline (24 h);
    ``deadline``: a deadline of its own."""
    from wflo.approvals import approvals

    monkeypatch.setenv("WFLO_PRINCIPAL", "user:owner")
    config.configure(database=pg_url, lease_seconds=5.0, poll_interval=0.05)
    try:
        store = config.get_store()

        @wflo.workflow(name="tests.roundtrips.decided")
        def decided(key: str, timeout: float | None) -> bool:
            return wflo.approval("go?", approvers=["user:bob"], timeout=timeout).approved

        for key, timeout, expected in (("warm", None, None), ("plain", None, 2), ("deadline", 600.0, 2)):
            results: list[Any] = []
            runner = threading.Thread(
                target=lambda k=key, t=timeout, r=results: r.append(decided.options(id=k).run(k, t))
            )
            runner.start()
            for _ in range(500):
                pending = approvals.list(run_id=key)
                if pending:
                    break
                threading.Event().wait(0.01)
            (req,) = pending
            trips: list[int] = []
            write_batch = store.write_batch

            def counted(fn: Any, trips: list[int] = trips, write_batch: Any = write_batch) -> Any:
                with counting(store) as counter:
                    # The decider's own: the woken run claims itself back at the commit, meanwhile.
                    counter.thread = threading.get_ident()
                    counter.on = True
                    try:
                        return write_batch(fn)
                    finally:
                        counter.on = False
                        trips.append(counter.trips)

            monkeypatch.setattr(store, "write_batch", counted)
            approvals.approve(req.id, principal="user:bob")
            monkeypatch.undo()
            monkeypatch.setenv("WFLO_PRINCIPAL", "user:owner")
            runner.join(10)
            assert results == [True]
            if expected is not None:
                assert trips == [expected], f"{key}: {trips}"
    finally:
        config.reset()


@pytest.mark.postgres
def test_a_woken_run_is_claimed_and_loaded_in_one_round_trip_on_postgres(pg_url: str) -> None:
    """Issue 20 (a timer wakes its run within 10 ms): between its wake-up and its ``run.resumed``
    a woken run made three round trips (the claim, its journal, the budget's lost calls), then
    the marker a fourth. Now the reads go with the claim (``Store.read_ahead``): one, then the
    marker."""
    from wflo.engine._workflow import _claim_woken

    config.configure(database=pg_url, lease_seconds=5.0, poll_interval=0.05)
    try:
        store = config.get_store()
        _waiting(store, "warm")
        _claim_woken(store, empty, "warm", "me", True)  # warm: the pool, lazy imports
        _waiting(store, "due")
        trips, (record, ctx) = _trips(store, lambda: _claim_woken(store, empty, "due", "me", True))
        assert trips == 2
        assert record.lease_owner == "me" and ctx is not None and ctx.last_event_type == "run.waiting"
        assert store.events("due")[-1].type == "run.resumed"
        # A look at a run not due yet reads nothing ahead: it is the claim alone.
        _waiting(store, "later", "2999-01-01T00:00:00.000000Z")
        trips, (record, ctx) = _trips(store, lambda: _claim_woken(store, empty, "later", "me", False))
        assert trips == 1 and ctx is None and record.status == "waiting"
    finally:
        config.reset()


def test_reads_sent_ahead_answer_only_a_claim_that_took_its_run(store_url: str) -> None:
    """A read sent with a claim is answered from there once, and only if the claim took the
    run; outside the block, or a second time, it is asked again (never an old answer)."""
    with open_store(store_url) as store:
        _waiting(store, "due")
        _waiting(store, "later", "2999-01-01T00:00:00.000000Z")
        journal = ("SELECT seq, type FROM events WHERE chain = ? ORDER BY seq", ("due",))
        later = ("SELECT seq, type FROM events WHERE chain = ? ORDER BY seq", ("later",))
        first = store.read(*journal)
        with store.read_ahead([journal, later]):
            assert store.claim("later", "me", 30, woken=True).lease_owner is None
            assert store.claim("due", "me", 30, woken=True).lease_owner == "me"
            with counting(store) as counter:
                counter.on = True
                assert store.read(*journal) == first
                counter.on = False
            if store.dialect == "postgresql":
                assert counter.trips == 0  # answered by the claim
            rows = store.read(*later)
        assert rows == store.read(*later)  # asked again: "later" was not taken
        store.write(lambda cur: store.execute(cur, "INSERT INTO events (chain, seq, type, at, data, prev_hash, hash) "
                                              "VALUES ('due', 99, 'x', 'now', '{}', '', '')"))  # fmt: skip
        assert store.read(*journal)[-1] == (99, "x")  # nothing kept past the block


@pytest.mark.postgres
def test_a_woken_claim_is_prepared_on_every_pooled_connection(pg_url: str) -> None:
    """psycopg prepares a statement only at its fifth use on a connection, and the pool hands
    its idle connections out first in, first out: a woken run's claim was parsed and planned
    every time, and at a timer's deadline the connection was rarely one that had claimed
    before. Each new pooled connection prepares it now (a claim of no run), and a claim keeps
    it prepared. Not behind a transaction pooler (``pooler=transaction``), which may not know
    the connection's prepared statements."""
    prepared = "SELECT count(*) FROM pg_prepared_statements WHERE strpos(statement, 'UPDATE runs SET lease_owner') > 0"
    open_store(pg_url).close()  # migrated: a new connection finds the runs table
    for url, run_id, expected in (
        (f"{pg_url}&pool_size=1", "direct", 1),
        (f"{pg_url}&pool_size=1&pooler=transaction", "pooled", 0),
    ):
        with open_store(url) as store:  # one connection: the claim's is the one read
            assert store.read(prepared) == [(expected,)]  # before any claim
            _waiting(store, run_id)
            assert store.claim(run_id, "me", 30, woken=True).lease_owner == "me"
            assert store.claim(run_id, "me", 30.0, woken=True).lease_owner == "me"  # int or float: one
            assert store.read(prepared) == [(expected,)]
