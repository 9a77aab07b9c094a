"""The indexes on ``events`` after m022 and m024 (issue 20): the (type, at) index leaves out the calls'
events (one per step, nine in ten of all events), the queries that read events by type or by
time still go through an index on both stores, and a store migrated with data in it answers
them as before."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from wflo.audit._tables import run_events_of_types
from wflo.compliance._common import _WINDOW_SQL
from wflo.cost._tables import JOURNAL_EVENTS
from wflo.server._decisions import ALERTS_SQL
from wflo.server._runs_live import FEED_APPROVALS_SQL, FEED_HEADS_SQL
from wflo.store import SYSTEM_CHAIN, TYPE_INDEXED, Head, NewEvent, Store, now_iso, open_store

# The hot reads by type or time, and the index each must go through (SQLite; PostgreSQL, where
# the planner weighs a short time range against the four approval types by its estimates).
PLANS = {
    "budget alerts": (ALERTS_SQL + " ORDER BY e.at DESC LIMIT 100", 0, "events_type_at", "events_type_at"),
    "budget alerts since": (
        ALERTS_SQL + " AND e.at >= ? ORDER BY e.at DESC LIMIT 100",
        1,
        "events_type_at",
        "events_type_at",
    ),
    "the feed's approvals": (FEED_APPROVALS_SQL, 1, "events_type_at", "events_(type_)?at"),
    "the feed's head moves": (FEED_HEADS_SQL, 1, "events_at", "events_at"),
    "spend from the journal": (
        JOURNAL_EVENTS.format(fields="e.data", where=" AND e.at >= ? AND e.at < ?"),
        2,
        "events_at",
        "events_at",
    ),
    "the compliance window": (_WINDOW_SQL, 2, "events_at", "events_at"),
}


def test_a_steps_event_is_left_out_of_the_type_index_on_sqlite(sqlite_url: str) -> None:
    with open_store(sqlite_url) as store:
        (sql,) = store.read("SELECT sql FROM sqlite_master WHERE name = 'events_type_at'")[0]
        assert sql.endswith(f"WHERE {TYPE_INDEXED}"), sql
        _fill(store)
        indexed = store.read(f"SELECT type FROM events INDEXED BY events_type_at WHERE {TYPE_INDEXED} ORDER BY type")
        assert "call.completed" not in {t for (t,) in indexed}
        assert {t for (t,) in indexed} >= {"budget.threshold", "approval.requested", "run.created"}


def test_inserting_an_event_builds_no_temporary_table_on_sqlite(sqlite_url: str) -> None:
    """m022's ``type NOT IN (four types)`` made SQLite build a temporary b-tree of the four
    values on every INSERT INTO events, to decide whether the row goes into the index: about a
    quarter of the instructions of a step's SQL (m024). The index's condition is now evaluated
    in place, and still leaves the calls' events out."""
    with open_store(sqlite_url) as store:
        program = store.read(
            "EXPLAIN INSERT INTO events (chain, seq, type, at, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [None] * 7,
        )
        opcodes = {str(r[1]) for r in program}
        assert "IdxInsert" in opcodes  # the program writes the indexes (the check reads the right thing)
        assert "OpenEphemeral" not in opcodes, sorted(opcodes)


def test_the_reads_by_type_or_time_use_their_index_on_sqlite(sqlite_url: str) -> None:
    with open_store(sqlite_url) as store:
        for name, (sql, n, index, _) in PLANS.items():
            plan = " ".join(str(r[-1]) for r in store.read("EXPLAIN QUERY PLAN " + sql, ["x"] * n))
            assert f"USING INDEX {index} " in plan, (name, plan)


@pytest.mark.postgres
def test_the_reads_by_type_or_time_use_their_index_on_postgres(pg_url: str) -> None:
    with open_store(pg_url) as store:
        _fill(store)
        (definition,) = store.read(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'events_type_at' AND schemaname = current_schema()"
        )[0]
        assert "WHERE (type <> ALL (ARRAY['call.started'::text, 'call.completed'::text" in definition, definition
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ANALYZE events")
        # A generic plan (as a prepared statement gets), and no sequential scan unless no index
        # can answer: on a small table the planner would otherwise prefer one.
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("SET enable_seqscan = off")
        for i, (name, (sql, n, _, index)) in enumerate(PLANS.items()):
            for k in range(1, n + 1):
                sql = sql.replace("?", f"${k}", 1)
            conn.execute(f"PREPARE q{i} ({', '.join(['text'] * n)}) AS {sql}" if n else f"PREPARE q{i} AS {sql}")
            args = f" ({', '.join(['NULL'] * n)})" if n else ""
            plan = " ".join(r[0] for r in conn.execute(f"EXPLAIN EXECUTE q{i}{args}"))
            assert re.search(rf"(using|Index Scan on) {index} ", plan) and "Seq Scan" not in plan, (name, plan)


def test_a_store_at_m021_with_events_upgrades_and_answers_alike(store_url: str) -> None:
    """A store with history, as m021 left it (every event in the (type, at) index), migrates
    in place: each read by type or time returns the same rows as before the migration."""
    with open_store(store_url) as store:
        _fill(store)

        def back_to_m021(cur: object) -> None:
            store.execute(cur, "DROP INDEX events_type_at")
            store.execute(cur, "CREATE INDEX events_type_at ON events (type, at)")
            store.execute(cur, "UPDATE wflo_meta SET value = '21' WHERE key = 'schema_version'")

        store.write(back_to_m021)
        before = _answers(store, old=True)
        assert store.migrate()[0] == "m022_eventidx_type_partial"  # and those after it
        assert _answers(store, old=False) == before
        assert before["budget alerts"] and before["the feed's approvals"] and before["spend from the journal"]
        assert before["the feed's head moves"]


def test_a_store_at_m023_with_events_upgrades_and_answers_alike(store_url: str) -> None:
    """A store with history and m022's index (its ``NOT IN`` condition) migrates in place to
    m024 (SQLite: the same index with the condition as comparisons; PostgreSQL: unchanged):
    each read by type or time returns the same rows and still goes through its index."""
    with open_store(store_url) as store:
        _fill(store)

        def back_to_m023(cur: object) -> None:
            if store.dialect == "sqlite":
                store.execute(cur, "DROP INDEX events_type_at")
                store.execute(cur, M022_INDEX)
            store.execute(cur, "UPDATE wflo_meta SET value = '23' WHERE key = 'schema_version'")

        store.write(back_to_m023)
        before = _answers(store, old=False)
        assert store.migrate()[0] == "m024_sqlstep_type_cond"  # and those after it, re-applied
        assert _answers(store, old=False) == before
        assert before["budget alerts"] and before["the feed's approvals"] and before["spend from the journal"]
        if store.dialect == "sqlite":
            (sql,) = store.read("SELECT sql FROM sqlite_master WHERE name = 'events_type_at'")[0]
            assert sql.endswith(f"WHERE {TYPE_INDEXED}"), sql
            for name, (query, n, index, _) in PLANS.items():
                plan = " ".join(str(r[-1]) for r in store.read("EXPLAIN QUERY PLAN " + query, ["x"] * n))
                assert f"USING INDEX {index} " in plan, (name, plan)


M022_INDEX = (
    "CREATE INDEX events_type_at ON events (type, at) "
    "WHERE type NOT IN ('call.started', 'call.completed', 'call.failed', 'call.retry')"
)
"""The index as m022 made it (the form SQLite stores keep until m024)."""


def _answers(store: Store, *, old: bool) -> dict[str, Any]:
    """Every read of ``PLANS`` (as m021's queries were, without ``TYPE_INDEXED``, and the feed's
    head moves grouped by the bare column, if ``old``),
    and the compliance report's run events, over the whole history."""
    window = ("2000-01-01", "2999-01-01")
    params: dict[int, list[Any]] = {0: [], 1: [window[0]], 2: list(window)}
    found: dict[str, Any] = {}
    for name, (sql, n, _, _) in PLANS.items():
        if old:
            sql = sql.replace(f" AND e.{TYPE_INDEXED}", "").replace(f" AND {TYPE_INDEXED}", "")
            sql = sql.replace("chain || ''", "chain")
        rows = store.read(sql, params[n])
        found[name] = rows if "ORDER BY" in sql else sorted(rows)
    found["report"] = run_events_of_types(store, window, ("call.completed", "call.failed", "loop.stopped"))
    return found


def _fill(store: Store) -> None:
    """Two runs with steps, a failed call, a budget alert and an approval; a system event."""
    for run_id in ("r1", "r2"):
        store.create_run(run_id=run_id, workflow="w", input={}, owner="me")
        events: list[tuple[str, dict[str, Any]]] = [
            ("call.started", {"call": "c0", "kind": "step"}),
            *[("call.completed", {"call": f"c{i}", "kind": "step", "output": i}) for i in range(5)],
            ("call.failed", {"call": "c9", "kind": "llm", "name": "m", "error": {"type": "E"}}),
            ("budget.threshold", {"scope": f"run:{run_id}", "percent": 80, "spent": "0.8", "limit": "1"}),
            ("approval.requested", {"approval_id": f"a-{run_id}"}),
            ("loop.stopped", {"detector": "repeat"}),
        ]
        for type_, data in events:
            _append(store, run_id, type_, data)
    store.append_chain(SYSTEM_CHAIN, [NewEvent("budget.set", {"scope": "global", "at": now_iso()})])


def _append(store: Store, run_id: str, type_: str, data: dict[str, Any]) -> None:
    run = store.get_run(run_id)
    append: Callable[..., Any] = store.append
    append(run_id, Head(run.last_seq, run.last_hash), [NewEvent(type_, data)], owner="me")
