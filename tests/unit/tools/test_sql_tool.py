"""sql_query: read-only by construction (parser) and by the database (read-only transaction)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from wflo.tools import ToolRefused, sql_query
from wflo.tools._sql import check_query

WRITES = [
    "INSERT INTO t VALUES (1, 'x')",
    "UPDATE t SET b = 'y'",
    "DELETE FROM t",
    "DROP TABLE t",
    "CREATE TABLE u (a int)",
    "ALTER TABLE t ADD COLUMN c int",
    "PRAGMA writable_schema = 1",
    "SELECT 1; DROP TABLE t",
    "SELECT 1 --\n; DELETE FROM t",
    "SELECT 1 /* ; */; DELETE FROM t",
    "SELECT * FROM t FOR UPDATE",
    "SELECT a INTO u FROM t",
    "SELECT pg_sleep(10)",
    "SELECT pg_catalog.pg_sleep(10)",
    "SELECT PG_READ_FILE('/etc/passwd')",
    "SELECT set_config('search_path', 'x', false)",
    "SELECT lo_import('/etc/passwd')",
    "SELECT load_extension('evil')",
    "SELECT 1 FROM t WHERE a IN (SELECT pg_terminate_backend(1))",
    "VACUUM",
    "",
    "   ",
]
PG_ONLY = [
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "WITH d AS (UPDATE t SET b = 'z' RETURNING *) SELECT * FROM d",
    "COPY t TO STDOUT",
    "SELECT * FROM dblink('host=evil', 'select 1') AS x(a int)",
    "SELECT * FROM t FOR SHARE",
]
SQLITE_ONLY = ["ATTACH DATABASE 'other.db' AS other", "DETACH DATABASE other", "REINDEX"]


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    path = tmp_path / "data.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i}") for i in range(50)])
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[str]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (a integer, b text)")
        conn.execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(0, 49) g")
    yield pg_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "pg_db"))


def _count(url: str) -> int:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM t").fetchone()
        assert row is not None
        return int(row[0])


def test_select_returns_columns_and_rows(db: str) -> None:
    out = sql_query(db)("SELECT a, b FROM t WHERE a < 3 ORDER BY a")
    assert out == {"columns": ["a", "b"], "rows": [[0, "row 0"], [1, "row 1"], [2, "row 2"]], "truncated": False}


def test_union_and_with_select_are_allowed(db: str) -> None:
    tool = sql_query(db)
    assert tool("SELECT 1 AS x UNION SELECT 2 ORDER BY x")["rows"] == [[1], [2]]
    assert tool("WITH s AS (SELECT a FROM t WHERE a < 2) SELECT count(*) AS n FROM s")["rows"] == [[2]]


@pytest.mark.parametrize("query", WRITES)
def test_writes_and_side_effects_are_refused(db: str, query: str) -> None:
    with pytest.raises(ToolRefused) as info:
        sql_query(db)(query)
    assert info.value.tool == "sql_query" and info.value.reason
    assert _count(db) == 50


@pytest.mark.parametrize("query", PG_ONLY)
@pytest.mark.postgres
def test_postgres_writes_are_refused(pg_db: str, query: str) -> None:
    with pytest.raises(ToolRefused):
        sql_query(pg_db)(query)
    assert _count(pg_db) == 50


@pytest.mark.parametrize("query", SQLITE_ONLY)
def test_sqlite_statements_are_refused(sqlite_db: str, query: str) -> None:
    with pytest.raises(ToolRefused):
        sql_query(sqlite_db)(query)


def test_refusal_names_the_problem() -> None:
    with pytest.raises(ToolRefused, match="exactly one statement"):
        check_query("SELECT 1; DELETE FROM t", "sqlite")
    with pytest.raises(ToolRefused, match=r"pg_sleep\(\) is not allowed"):
        check_query("SELECT pg_sleep(1)", "postgres")
    with pytest.raises(ToolRefused, match="DELETE is not allowed"):
        check_query("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "postgres")
    with pytest.raises(ToolRefused, match="INTO"):
        check_query("SELECT a INTO u FROM t", "postgres")


def test_row_cap_truncates(db: str) -> None:
    out = sql_query(db, max_rows=10)("SELECT a FROM t ORDER BY a")
    assert out["truncated"] is True and len(out["rows"]) == 10 and out["rows"][-1] == [9]
    exact = sql_query(db, max_rows=50)("SELECT a FROM t")
    assert exact["truncated"] is False and len(exact["rows"]) == 50


def test_sqlite_timeout_stops_the_query(sqlite_db: str) -> None:
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(ToolRefused, match=r"longer than 0\.3s"):
        sql_query(sqlite_db, timeout="300ms")(endless)


@pytest.mark.postgres
def test_postgres_timeout_stops_the_query(pg_db: str) -> None:
    heavy = "SELECT count(*) FROM generate_series(1, 1000000000) AS g"
    with pytest.raises(ToolRefused, match=r"longer than 0\.3s"):
        sql_query(pg_db, timeout="300ms")(heavy)


def test_sqlite_database_layer_refuses_writes_even_past_the_parser(sqlite_db: str) -> None:
    """The second layer alone: raw SQL sent past the parser still cannot write."""
    from wflo.tools._sql import _run_sqlite

    path = sqlite_db.removeprefix("sqlite:///")
    with pytest.raises(ToolRefused, match="refused the query"):
        _run_sqlite("sql_query", path, "DELETE FROM t", 10, 5.0)
    assert _count(sqlite_db) == 50


@pytest.mark.postgres
def test_postgres_database_layer_refuses_writes_even_past_the_parser(pg_db: str) -> None:
    from wflo.tools._sql import _run_postgres

    with pytest.raises(ToolRefused, match="read-only transaction"):
        _run_postgres("sql_query", pg_db, "DELETE FROM t", 10, 5.0)
    assert _count(pg_db) == 50


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(ToolRefused, match="read-only"):
        sql_query(f"sqlite:///{tmp_path}/nope.db")("SELECT 1")
    assert not (tmp_path / "nope.db").exists()


def test_bad_configuration_is_a_user_error() -> None:
    from wflo import UserError

    with pytest.raises(UserError):
        sql_query("mysql://x/y")
    with pytest.raises(UserError):
        sql_query("sqlite:///x.db", max_rows=0)
    with pytest.raises(UserError):
        sql_query("sqlite:///x.db", timeout="soon")


def test_manifest() -> None:
    m = sql_query("sqlite:///x.db", name="warehouse").manifest()
    assert m["name"] == "warehouse" and m["risk"] == "medium"
    assert m["parameters"]["properties"] == {"query": {"type": "string"}} and m["parameters"]["required"] == ["query"]


def test_inside_a_run_the_tool_is_journaled_and_refusals_are_recorded(configured: str, sqlite_db: str) -> None:
    import wflo
    from wflo import _config

    query = sql_query(sqlite_db)

    @wflo.workflow(name="tools-sql")
    def report() -> object:
        rows = query("SELECT count(*) AS n FROM t")["rows"]
        try:
            query("DELETE FROM t")
        except ToolRefused as refused:
            return {"rows": rows, "refused": refused.reason}
        return None

    out = report.options(id="tools-sql-1").run()
    assert isinstance(out, dict) and out["rows"] == [[50]] and "DELETE" in out["refused"]
    events = _config.get_store().events("tools-sql-1")
    calls = [e.data for e in events if e.type.startswith("call.")]
    assert [c["name"] for c in calls] == ["sql_query", "sql_query"]
    assert calls[0]["output"] == {"columns": ["n"], "rows": [[50]], "truncated": False}
    assert _count(sqlite_db) == 50
