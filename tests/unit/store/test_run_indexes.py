"""The indexes on ``runs`` after m020 (issue 20): fewer entries written per run, the same
queries still answered through an index on both stores (a partial index holds only the runs
with a parent, a tenant or a queue; a query naming one implies the column is not NULL)."""

from __future__ import annotations

import psycopg
import pytest

from wflo.store import open_store

QUERIES = [
    "SELECT id FROM runs WHERE parent_id = ? ORDER BY created_at, id LIMIT 5",
    "SELECT id FROM runs WHERE tenant = ? ORDER BY created_at DESC, id DESC LIMIT 5",
    "SELECT COUNT(*) FROM runs WHERE queue = ? AND started_at > ?",
    "SELECT id FROM runs WHERE status = 'running' AND lease_expires_at < ? ORDER BY created_at LIMIT 1",
    "SELECT id FROM runs WHERE workflow = ? ORDER BY created_at DESC, id DESC LIMIT 5",
]


def test_the_queries_still_use_an_index_on_sqlite(sqlite_url: str) -> None:
    with open_store(sqlite_url) as store:
        for sql in QUERIES:
            plan = " ".join(str(r[-1]) for r in store.read("EXPLAIN QUERY PLAN " + sql, ["x"] * sql.count("?")))
            assert "USING" in plan and "SCAN runs" not in plan, (sql, plan)


@pytest.mark.postgres
def test_the_queries_still_use_an_index_on_postgres(pg_url: str) -> None:
    open_store(pg_url).close()  # migrated
    with psycopg.connect(pg_url, autocommit=True) as conn:
        # A generic plan (as a prepared statement gets), and no sequential scan unless no index
        # can answer: on an empty table the planner would otherwise prefer one.
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("SET enable_seqscan = off")
        for i, sql in enumerate(QUERIES):
            n = sql.count("?")
            for k in range(1, n + 1):
                sql = sql.replace("?", f"${k}", 1)
            conn.execute(f"PREPARE q{i} ({', '.join(['text'] * n)}) AS {sql}")
            args = ", ".join(["'x'"] * n)
            plan = " ".join(r[0] for r in conn.execute(f"EXPLAIN EXECUTE q{i} ({args})"))
            assert "Index" in plan and "Seq Scan" not in plan, (sql, plan)


def test_top_level_runs_leave_the_partial_indexes_empty(sqlite_url: str) -> None:
    with open_store(sqlite_url) as store:
        store.create_run(run_id="top", workflow="w", input={}, owner="me")
        store.create_run(run_id="kid", workflow="w", input={}, owner="me", parent_id="top", tenant="t", queue="q")
        for index, column in (("runs_parent", "parent_id"), ("runs_list_tenant", "tenant")):
            rows = store.read(
                f"SELECT id FROM runs INDEXED BY {index} WHERE {column} = ?", ("top" if column == "parent_id" else "t",)
            )
            assert rows == [("kid",)], (index, rows)
        (sql,) = store.read("SELECT sql FROM sqlite_master WHERE name = 'runs_parent'")[0]
        assert "WHERE parent_id IS NOT NULL" in sql
