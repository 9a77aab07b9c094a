"""An empty run's two statements on PostgreSQL (issue 20, "pgempty"): a run's end is one plain
statement (``_END``: the fenced UPDATE of the head, status, output or error, end time and lease,
the notification from its ``RETURNING``, the event's INSERT from it, ``wflo_lease_lost`` raising
WF001 when the fence failed) instead of ``wflo_append``; a run with an owner is created by
``_CREATE_OWNED`` (its two events as scalars, no notification, nothing answered for an id that
exists). What they must keep: the fence on owner and head (nothing written, nobody notified,
when it fails), the end's durable commit, the notification of the end, the hash chain, the rows
``wflo_append`` and ``_CREATE_RUN`` wrote, the counts, and a schema before m025 (no
``wflo_lease_lost``), which keeps ``wflo_append``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from wflo._errors import LeaseLost
from wflo.audit import verify_run
from wflo.store import MIGRATIONS, Head, NewEvent, open_store
from wflo.store._pgdirect import alone
from wflo.store._postgres import PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    with open_store(f"{pg_url}&pool_size=1") as opened:
        assert isinstance(opened, PostgresStore)
        yield opened


def _run(store: PostgresStore, run_id: str, owner: str = "a") -> Head:
    run, _ = store.create_run(run_id=run_id, workflow="w", input={"x": 1}, owner=owner, lease_seconds=30)
    return Head(run.last_seq, run.last_hash)


def _sent(store: PostgresStore) -> list[str]:
    """The statements the store sends through its direct path from now on."""
    sent: list[str] = []
    real = store._direct

    def spy(conn: Any, stmt: Any, params: Any) -> Any:
        sent.append(stmt.sql)
        return real(conn, stmt, params)

    store._direct = spy  # type: ignore[method-assign]
    return sent


def _is_end(sql: str) -> bool:
    return "wflo_append" not in sql and "wflo_lease_lost" in sql and "pg_notify" in sql and "finished_at" in sql


def _end(store: PostgresStore, run_id: str, head: Head, owner: str, *, failed: bool = False) -> Head:
    if failed:
        return store.append(run_id, head, [NewEvent("run.failed", {"error": {"type": "E"}})], owner=owner,
                            status="failed", error={"type": "E", "message": "no"}, finish=True)  # fmt: skip
    return store.append(run_id, head, [NewEvent("run.completed", {"output": [1, "é"]})], owner=owner,
                        status="succeeded", output=[1, "é"], finish=True)  # fmt: skip


def _listen(pg_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(pg_url, autocommit=True)
    conn.execute("LISTEN wflo_runs")
    return conn


def _heard(conn: psycopg.Connection[Any], run_id: str, timeout: float = 0.5) -> bool:
    """Whether a NOTIFY about ``run_id`` came within ``timeout`` s. NOTIFY is per database and
    the test schemas share one: other tests' payloads are passed over (they failed this test
    now and then in a full run)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if any(n.payload == run_id for n in conn.notifies(timeout=left, stop_after=1)):
            return True
    return False


def test_a_run_s_end_is_one_plain_statement_fenced_on_owner_and_head(store: PostgresStore, pg_url: str) -> None:
    head = _run(store, "r-end-fence")
    listener = _listen(pg_url)
    try:
        sent = _sent(store)
        with pytest.raises(LeaseLost):  # another owner
            _end(store, "r-end-fence", head, "b")
        with pytest.raises(LeaseLost):  # a stale head, even for the holder
            _end(store, "r-end-fence", Head(head.seq - 1, head.hash), "a")
        assert sent and all(_is_end(s) for s in sent), sent
        assert not _heard(listener, "r-end-fence")  # nobody told of an end that did not happen
        run = store.get_run("r-end-fence")
        assert (run.status, run.lease_owner, run.finished_at, run.last_seq) == ("running", "a", None, head.seq)
        assert [e.type for e in store.events("r-end-fence")] == ["run.created", "run.started"]
        with store._connection() as conn:  # nothing left open by the refused statements
            assert alone(conn)
        new = _end(store, "r-end-fence", head, "a")
        assert _heard(listener, "r-end-fence", 5.0)
    finally:
        listener.close()
    assert len(sent) == 3 and _is_end(sent[-1])
    assert "synchronous_commit" not in sent[-1]  # the end's commit waits for the flush
    run = store.get_run("r-end-fence")
    assert (run.status, run.output, run.lease_owner, run.lease_expires_at) == ("succeeded", [1, "é"], None, None)
    assert (run.last_seq, run.last_hash) == (new.seq, new.hash) == (head.seq + 1, store.events("r-end-fence")[-1].hash)
    assert run.finished_at == run.updated_at == store.events("r-end-fence")[-1].at
    assert verify_run(store, "r-end-fence").ok
    assert store.read("SHOW synchronous_commit") == [("on",)]
    assert store.count_runs_by_status() == {"succeeded": 1}


def test_a_run_s_end_writes_the_rows_wflo_append_wrote(pg_url: str) -> None:
    """The same ends, succeeded and failed, through ``_END`` and through ``wflo_append`` (a store
    that takes its schema for one before m025): the same run rows but for ids and times, and the
    same events; a cancel request is seen by both."""
    with open_store(pg_url) as lean, open_store(pg_url) as general:
        assert isinstance(lean, PostgresStore) and isinstance(general, PostgresStore)
        general._lean_step = False
        sent_lean, sent_general = _sent(lean), _sent(general)
        rows: dict[str, Any] = {}
        for name, store in (("lean", lean), ("general", general)):
            for failed in (False, True):
                run_id = f"r-{name}-{failed}"
                head = _run(store, run_id)
                store.request_cancel(run_id)
                new = _end(store, run_id, head, "a", failed=failed)
                assert new.cancel_requested
                run = store.get_run(run_id)
                rows[run_id] = (run.status, run.output, run.error, run.lease_owner, run.lease_expires_at,
                                run.last_seq, run.finished_at == run.updated_at, run.wake_at, run.cancel_requested,
                                [(e.seq, e.type, e.data) for e in store.events(run_id)])  # fmt: skip
                assert verify_run(store, run_id).ok
        assert [_is_end(s) for s in sent_lean if "UPDATE" in s] == [True, True]
        assert sent_general and not any(_is_end(s) for s in sent_general)
        for failed in (False, True):
            assert rows[f"r-lean-{failed}"] == rows[f"r-general-{failed}"]
        assert lean.count_runs_by_status() == {"succeeded": 2, "failed": 2}


def test_a_store_before_m025_ends_its_runs_with_wflo_append(pg_url: str) -> None:
    """A schema without ``wflo_lease_lost`` (before m025), opened without migrating: the end is
    ``wflo_append`` (``_END`` would fail there), fenced as before; then it upgrades."""
    index = [m.name for m in MIGRATIONS].index("m025_pgstep_lean_step")
    with open_store(pg_url) as store:
        head = _run(store, "r-end-old")  # type: ignore[arg-type]

        def back(cur: object) -> None:
            store.execute(cur, "DROP FUNCTION wflo_lease_lost(text)")
            store.execute(cur, f"UPDATE wflo_meta SET value = '{index}' WHERE key = 'schema_version'")

        store.write(back)
    with open_store(pg_url, migrate=False, verify=False) as old:
        assert isinstance(old, PostgresStore)
        sent = _sent(old)
        with pytest.raises(LeaseLost):
            _end(old, "r-end-old", head, "b")
        _end(old, "r-end-old", head, "a")
        assert sent and all("wflo_append" in s for s in sent)
        assert old.get_run("r-end-old").status == "succeeded"
        assert verify_run(old, "r-end-old").ok
        assert old.migrate()[:1] == ["m025_pgstep_lean_step"]


def test_a_run_with_an_owner_is_created_by_the_owned_statement(store: PostgresStore, pg_url: str) -> None:
    """``_CREATE_OWNED``: the same rows as ``_CREATE_RUN`` for the same run (its events as
    scalars), relaxed, nobody notified; an id that exists gives the stored run, not created,
    and writes nothing."""
    listener = _listen(pg_url)
    try:
        sent = _sent(store)
        record, created = store.create_run(run_id="r-own", workflow="w", input={"x": [1, "é"]}, owner="a",
                                           lease_seconds=30, options={"tags": ["t"]}, tenant="acme")  # fmt: skip
        assert created and record == store.get_run("r-own")
        assert len(sent) == 1 and "unnest" not in sent[0] and "pg_notify" not in sent[0]
        assert "synchronous_commit" in sent[0]  # relaxed: see Commit modes
        assert not _heard(listener, "r-own")  # a run with an owner is nobody else's to claim
        again, created = store.create_run(run_id="r-own", workflow="w", input={}, owner="b", lease_seconds=30)
        assert not created and again == record
        assert [e.type for e in store.events("r-own")] == ["run.created", "run.started"]
        assert verify_run(store, "r-own").ok
        _, created = store.create_run(run_id="r-queued", workflow="w", input={})
        assert created and "unnest" in sent[-1] and _heard(listener, "r-queued", 5.0)
    finally:
        listener.close()
    assert store.count_runs_by_status() == {"running": 1, "queued": 1}


def test_the_owned_create_inside_a_transaction_commits_with_it(store: PostgresStore) -> None:
    """Inside a caller's transaction the owned create is the durable text, and rolls back with it."""

    def create_then_fail(cur: object) -> None:
        store.create_run(run_id="r-tx", workflow="w", input={}, owner="a", lease_seconds=30)
        raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        store.write(create_then_fail)
    assert store.read("SELECT count(*) FROM runs") == [(0,)]
    assert store.count_runs_by_status() == {}


def test_racing_owned_creates_of_one_id_create_it_once(pg_url: str) -> None:
    with open_store(f"{pg_url}&pool_size=8") as store:
        results: list[tuple[str | None, bool]] = []
        errors: list[BaseException] = []
        gate = threading.Barrier(6)

        def create(t: int) -> None:
            try:
                gate.wait()
                record, created = store.create_run(run_id="r-race", workflow="w", input={}, owner=f"o{t}",
                                                   lease_seconds=30)  # fmt: skip
                results.append((record.lease_owner, created))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        winners = [owner for owner, created in results if created]
        assert len(winners) == 1 and {owner for owner, _ in results} == set(winners)
        assert store.count_runs_by_status() == {"running": 1}
        assert len(store.events("r-race")) == 2


def test_a_released_lease_tells_the_idle_workers(store: PostgresStore, pg_url: str) -> None:
    # A worker lets go of a claim that landed after it was asked to stop (Store.release): the run
    # is claimable at once, and the other workers must hear so, not find it at their next poll.
    _run(store, "r-release")
    listener = _listen(pg_url)
    try:
        store.release("r-release", "someone-else")  # not the holder: nothing released, nobody told
        assert not _heard(listener, "r-release")
        store.release("r-release", "a")
        assert _heard(listener, "r-release", 5.0)
    finally:
        listener.close()
    assert store.get_run("r-release").lease_owner is None
