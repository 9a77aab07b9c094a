"""A step's append on PostgreSQL (issue 20, migration m025): one event, nothing of the run's
projection changed but its head. It is sent as one plain statement instead of ``wflo_append``
(the fenced UPDATE of the head alone, the event's INSERT from it, ``wflo_lease_lost`` raising
WF001 only when the fence failed). What it must keep: the fence on owner and head (nothing
written when it fails, ops included), the hash chain, cancel detection, the commit modes, and
the same rows ``wflo_append`` wrote; from the event loop too. Everything else still goes
through ``wflo_append``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from wflo._errors import LeaseLost
from wflo.audit import verify_run
from wflo.store import MIGRATIONS, Head, NewEvent, _postgres, open_store
from wflo.store._pgdirect import alone
from wflo.store._postgres import PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    with open_store(f"{pg_url}&pool_size=1") as opened:
        assert isinstance(opened, PostgresStore)
        yield opened


def _run(store: PostgresStore, run_id: str, owner: str | None = "a") -> Head:
    run, _ = store.create_run(run_id=run_id, workflow="w", input={}, owner=owner, lease_seconds=30)
    return Head(run.last_seq, run.last_hash)


def _sent(store: PostgresStore, attr: str = "_direct") -> list[str]:
    """The statements the store sends through ``attr`` (its direct path) from now on."""
    sent: list[str] = []
    real = getattr(store, attr)

    def spy(conn: Any, stmt: Any, params: Any) -> Any:
        sent.append(stmt.sql)
        return real(conn, stmt, params)

    setattr(store, attr, spy)
    return sent


def _is_step(sql: str) -> bool:
    """The step's statement: no ``wflo_append``, and its UPDATE names the head's columns only."""
    update = sql.split("RETURNING")[0]
    return "wflo_append" not in sql and "wflo_lease_lost" in sql and "status" not in update


def test_a_step_is_the_lean_statement_and_stays_fenced_on_owner_and_head(store: PostgresStore) -> None:
    head = _run(store, "r-step-fence")
    sent = _sent(store)
    with pytest.raises(LeaseLost):  # another owner
        store.append("r-step-fence", head, [NewEvent("call.completed", {"call": "1"})], owner="b")
    with pytest.raises(LeaseLost):  # a stale head, even for the holder
        store.append("r-step-fence", Head(head.seq - 1, head.hash), [NewEvent("call.completed", {})], owner="a")
    assert sent and all(_is_step(s) for s in sent), sent
    run = store.get_run("r-step-fence")
    assert (run.last_seq, run.last_hash, run.status) == (head.seq, head.hash, "running")
    assert [e.type for e in store.events("r-step-fence")] == ["run.created", "run.started"]
    with store._connection() as conn:  # nothing left open by the refused statements
        assert alone(conn)
    new = store.append("r-step-fence", head, [NewEvent("call.completed", {"call": "1"})], owner="a")
    assert new.seq == head.seq + 1 and not new.cancel_requested
    run = store.get_run("r-step-fence")
    assert (run.last_seq, run.last_hash, run.lease_owner, run.status) == (new.seq, new.hash, "a", "running")
    assert run.updated_at == store.events("r-step-fence")[-1].at
    assert verify_run(store, "r-step-fence").ok


def test_a_step_writes_the_rows_wflo_append_wrote(store: PostgresStore) -> None:
    """The same steps, one run through the step's statement and one through ``wflo_append``
    (two events at once take that path): the same events, links and head."""
    events = [
        NewEvent("call.completed", {"call": str(i), "output": i}, "2026-01-01T00:00:00.000000Z") for i in range(4)
    ]
    lean = _run(store, "r-step-lean")
    sent = _sent(store)
    for ev in events:
        lean = store.append("r-step-lean", lean, [ev], owner="a")
    assert len(sent) == 4 and all(_is_step(s) for s in sent)
    general = _run(store, "r-step-general")
    general = store.append("r-step-general", general, events[:2], owner="a")
    general = store.append("r-step-general", general, events[2:], owner="a")
    assert not any(_is_step(s) for s in sent[4:])

    def rows(run_id: str) -> list[tuple[Any, ...]]:
        return [(e.seq, e.type, e.at, e.data) for e in store.events(run_id)][2:]

    assert rows("r-step-lean") == rows("r-step-general")
    assert lean.seq == general.seq
    for run_id in ("r-step-lean", "r-step-general"):
        assert verify_run(store, run_id).ok
        run = store.get_run(run_id)
        assert (run.last_seq, run.last_hash) == (store.events(run_id)[-1].seq, store.events(run_id)[-1].hash)


def test_a_step_sees_a_cancel_request_and_a_run_without_an_owner(store: PostgresStore) -> None:
    head = _run(store, "r-step-cancel")
    head = store.append("r-step-cancel", head, [NewEvent("call.completed", {})], owner="a")
    assert not head.cancel_requested
    store.request_cancel("r-step-cancel")
    head = store.append("r-step-cancel", head, [NewEvent("call.completed", {})], owner="a")
    assert head.cancel_requested
    # A run nobody holds: the fence is "nobody holds it" (``owner=None``), as for ``wflo_append``.
    free = _run(store, "r-step-free", owner=None)
    with pytest.raises(LeaseLost):
        store.append("r-step-free", free, [NewEvent("x", {})], owner="a")
    assert store.append("r-step-free", free, [NewEvent("x", {})], owner=None).seq == free.seq + 1


def test_a_step_with_ops_is_pipelined_and_rolled_back_with_its_fence(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = _run(store, "r-step-ops")
    store.write(lambda cur: store.execute(cur, "CREATE TABLE ps_notes (n TEXT NOT NULL)"))
    # The step's statement, not ``wflo_append``'s, is the one pipelined with the ops.
    broken = _postgres.Statement("SELECT 1 / 0")
    monkeypatch.setattr(_postgres, "_APPEND_ALONE", (broken, broken))

    def op(cur: Any) -> None:
        store.execute(cur, "INSERT INTO ps_notes (n) VALUES (?)", ("x",))

    with pytest.raises(LeaseLost):
        store.append("r-step-ops", head, [NewEvent("call.completed", {})], owner="b", ops=[op])
    assert store.read("SELECT count(*) FROM ps_notes") == [(0,)]
    new = store.append("r-step-ops", head, [NewEvent("call.completed", {})], owner="a", ops=[op])
    assert new.seq == head.seq + 1
    assert store.read("SELECT count(*) FROM ps_notes") == [(1,)]
    assert verify_run(store, "r-step-ops").ok


def test_markers_stay_relaxed_and_steps_durable_through_the_step_statement(store: PostgresStore) -> None:
    head = _run(store, "r-step-modes")
    sent = _sent(store)
    head = store.append("r-step-modes", head, [NewEvent("run.resumed", {})], owner="a")
    head = store.append("r-step-modes", head, [NewEvent("call.completed", {})], owner="a")
    assert len(sent) == 2 and all(_is_step(s) for s in sent)
    assert "synchronous_commit" in sent[0] and "synchronous_commit" not in sent[1]
    assert store.read("SHOW synchronous_commit") == [("on",)]


def test_a_step_from_the_event_loop_is_the_step_statement(store: PostgresStore) -> None:
    head = _run(store, "r-step-loop")
    sent = _sent(store, "_direct_gen")

    async def append(head: Head, owner: str) -> Head:
        writer = store.loop_writer("r-step-loop")
        assert writer is not None
        try:
            return await writer.append("r-step-loop", head, [NewEvent("call.completed", {})], owner=owner)  # type: ignore[no-any-return]
        finally:
            writer.close()

    async def main() -> Head:
        with pytest.raises(LeaseLost):
            await append(head, "b")
        store.request_cancel("r-step-loop")
        return await append(head, "a")

    new = asyncio.run(main())
    assert new.seq == head.seq + 1 and new.cancel_requested
    assert len(sent) == 2 and all(_is_step(s) for s in sent)
    assert verify_run(store, "r-step-loop").ok


def test_a_store_before_m025_upgrades_and_then_steps(pg_url: str) -> None:
    """A store migrated before m025 (no ``wflo_lease_lost``) upgrades in place; its runs go on
    stepping, fenced, after it."""
    index = [m.name for m in MIGRATIONS].index("m025_pgstep_lean_step")
    with open_store(pg_url) as store:
        head = _run(store, "r-step-old")  # type: ignore[arg-type]

        def back(cur: object) -> None:
            store.execute(cur, "DROP FUNCTION wflo_lease_lost(text)")
            store.execute(cur, f"UPDATE wflo_meta SET value = '{index}' WHERE key = 'schema_version'")

        store.write(back)
    with open_store(pg_url, migrate=False, verify=False) as store:
        assert store.migrate()[:1] == ["m025_pgstep_lean_step"]
    with open_store(pg_url) as store:
        assert store.read("SELECT to_regproc('wflo_lease_lost') IS NOT NULL") == [(True,)]
        with pytest.raises(LeaseLost):
            store.append("r-step-old", head, [NewEvent("call.completed", {})], owner="b")
        new = store.append("r-step-old", head, [NewEvent("call.completed", {})], owner="a")
        assert new.seq == head.seq + 1
        assert verify_run(store, "r-step-old").ok
