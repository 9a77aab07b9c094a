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
    from wflo.tools._sql import _Caps, _run_sqlite

    path = sqlite_db.removeprefix("sqlite:///")
    with pytest.raises(ToolRefused, match="refused the query"):
        _run_sqlite("sql_query", path, "DELETE FROM t", _Caps(10, 1000, 10_000, 5.0))
    assert _count(sqlite_db) == 50


@pytest.mark.postgres
def test_postgres_database_layer_refuses_writes_even_past_the_parser(pg_db: str) -> None:
    import psycopg

    from wflo.tools._sql import _Caps, _run_postgres

    with psycopg.connect(pg_db, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE s")
    caps = _Caps(10, 1000, 10_000, 5.0)
    # nextval() is a write the parser would refuse (denylist); here only the read-only
    # transaction stands in its way
    with pytest.raises(ToolRefused, match="read-only transaction"):
        _run_postgres("sql_query", pg_db, "SELECT nextval('s')", caps)
    with pytest.raises(ToolRefused, match="refused the query"):
        _run_postgres("sql_query", pg_db, "DELETE FROM t", caps)
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
    for bad in (0, -1, True, 1.5, "1MB"):
        with pytest.raises(UserError, match="max_cell_bytes"):
            sql_query("sqlite:///x.db", max_cell_bytes=bad)  # type: ignore[arg-type]
        with pytest.raises(UserError, match="max_result_bytes"):
            sql_query("sqlite:///x.db", max_result_bytes=bad)  # type: ignore[arg-type]


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


# --------------------------------------------------------------------------- size caps


def _huge(db: str, size: int) -> str:
    """A query making one value of ``size`` bytes inside the database."""
    if db.startswith("sqlite"):
        return f"SELECT randomblob({size}) AS big"
    # from a column, so PostgreSQL builds it when the row is read, not when planning
    return f"SELECT repeat(left(b, 1), {size}) AS big FROM t LIMIT 1"


_PROBE = """
import resource, sys, time
from wflo.tools import ToolRefused, sql_query
tool = sql_query(sys.argv[1], timeout="20s")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.monotonic()
try:
    tool(sys.argv[2])
    print("returned")
except ToolRefused as exc:
    print("refused:", exc.reason)
print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_200mb_value_is_refused_quickly_without_the_memory(db: str) -> None:
    """Issue 14 finding 7: a 200 MB value is refused before it is in this process (a fresh
    process, so its peak memory is the query's): today's code holds it (and its base64)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, db, _huge(db, 200_000_000)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("refused:") and "max_cell_bytes=100000" in lines[0], proc.stdout
    assert "sql_query(..., max_cell_bytes=...)" in lines[0]
    seconds, grown_kib = lines[1].split()
    assert float(seconds) < 10
    assert int(grown_kib) < 50_000, f"peak memory grew {int(grown_kib) // 1024} MB"


def test_cell_cap_is_configurable_and_exact(db: str) -> None:
    tool = sql_query(db, max_cell_bytes=1000)
    at_cap = "SELECT zeroblob(1000) AS v" if db.startswith("sqlite") else "SELECT repeat('x', 1000) AS v"
    assert len(tool(at_cap)["rows"]) == 1
    with pytest.raises(ToolRefused, match=r"max_cell_bytes=1000\b") as info:
        tool(_huge(db, 1001))
    assert "\n" not in info.value.reason
    assert len(sql_query(db, max_cell_bytes=2000)(_huge(db, 1001))["rows"]) == 1


def test_cell_cap_holds_for_stored_values(db: str) -> None:
    """A large value already in a table is refused too (not only one computed by the query)."""
    if db.startswith("sqlite"):
        conn = sqlite3.connect(db.removeprefix("sqlite:///"))
        conn.execute("INSERT INTO t VALUES (1000, ?)", ("y" * 300_000,))
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(db, autocommit=True) as pg:
            pg.execute("INSERT INTO t VALUES (1000, repeat('y', 300000))")  # stored compressed
    tool = sql_query(db)
    with pytest.raises(ToolRefused, match="max_cell_bytes=100000"):
        tool("SELECT a, b FROM t WHERE a = 1000")
    assert tool("SELECT a, length(b) AS n FROM t WHERE a = 1000")["rows"] == [[1000, 300_000]]


def test_total_cap_refuses_and_names_it(db: str) -> None:
    # 50 rows of 'row N' (5-6 bytes each) and their ids: far past 100 bytes in all
    with pytest.raises(ToolRefused, match=r"max_result_bytes=100 after \d+ row") as info:
        sql_query(db, max_result_bytes=100)("SELECT a, b FROM t ORDER BY a")
    assert "sql_query(..., max_result_bytes=...)" in info.value.reason
    out = sql_query(db, max_result_bytes=10_000)("SELECT a, b FROM t ORDER BY a")
    assert len(out["rows"]) == 50 and out["rows"][0] == [0, "row 0"]
    # rows past max_rows are not counted: the cut comes first
    assert sql_query(db, max_rows=2, max_result_bytes=40)("SELECT a, b FROM t ORDER BY a")["truncated"] is True


def test_many_capped_rows_stop_at_the_total(db: str) -> None:
    """1000 rows of 90 kB each (every one under the cell cap) would be 90 MB: reading stops at
    the total cap instead of fetching them all first."""
    big = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000) "
        "SELECT x, randomblob(90000) AS v FROM c"
        if db.startswith("sqlite")
        else "SELECT g AS x, repeat('z', 90000) AS v FROM generate_series(1, 1000) g"
    )
    with pytest.raises(ToolRefused, match=r"max_result_bytes=1000000 after 12 row"):
        sql_query(db)(big)


@pytest.mark.postgres
def test_postgres_wrapper_keeps_names_order_and_types(pg_db: str) -> None:
    tool = sql_query(pg_db)
    out = tool("SELECT 1 AS a, 'x' AS a, NULL::int AS n, ARRAY[1, 2] AS arr ORDER BY 1")
    assert out == {"columns": ["a", "a", "n", "arr"], "rows": [[1, "x", None, [1, 2]]], "truncated": False}
    assert tool("SELECT a FROM t ORDER BY a DESC LIMIT 3")["rows"] == [[49], [48], [47]]
    assert tool("WITH s AS (SELECT a FROM t) SELECT max(a) AS m FROM s UNION ALL SELECT 7")["rows"] == [[49], [7]]
