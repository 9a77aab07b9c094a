"""``sql_query``: read-only SQL for an agent, on SQLite or PostgreSQL.

Two independent layers, so a gap in one is caught by the other:

1. *Before* the query reaches the database, it is parsed with ``sqlglot`` (in the URL's dialect)
   and must be exactly one ``SELECT`` (or ``UNION``/``INTERSECT``/``EXCEPT``, or ``WITH … SELECT``)
   with no data-modifying node anywhere in its tree (no DML in a CTE, no ``SELECT … INTO``, no
   ``FOR UPDATE``) and no call to a function on the denylist (``pg_sleep``, ``pg_read_file``,
   ``lo_*``, ``dblink*``, ``set_config``, ``load_extension``, …). What runs is the SQL regenerated
   from the checked tree, never the raw text, so comment and multi-statement tricks cannot
   smuggle in a second statement.
2. The database itself is told to refuse writes: SQLite is opened ``mode=ro`` with
   ``PRAGMA query_only=ON``, an authorizer that allows only reads, and no ``ATTACH``; PostgreSQL
   runs the query in a ``READ ONLY`` transaction with a ``statement_timeout`` and rolls it back.

Limits: ``timeout`` (SQLite: a progress-handler deadline; PostgreSQL: ``statement_timeout``)
and ``max_rows`` (``fetchmany(max_rows + 1)``; the result says ``truncated: true``).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import sqlite3
import time
import uuid
from typing import Any
from urllib.parse import quote, unquote

from .._errors import UserError
from ..approvals._policy import Approval, parse_duration
from ._errors import ToolRefused
from ._tool import Tool

__all__ = ["sql_query"]

# Root statements a query may be; every other statement kind anywhere in the tree is refused.
_ROOTS = ("Select", "Union", "Intersect", "Except", "Subquery")
_FORBIDDEN_NODES = (
    "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "AlterTable", "Command", "Pragma",
    "Attach", "Detach", "Copy", "Into", "Lock", "Set", "Transaction", "Commit", "Rollback", "Use",
    "TruncateTable", "LoadData", "Grant", "Revoke", "Analyze", "Describe", "Cache", "Uncache", "Refresh",
    "Kill", "Comment", "Install", "Export",
)  # fmt: skip
_DENY_FUNCTIONS = frozenset(
    {
        # PostgreSQL: side effects, file/server access, session changes, SQL run from strings
        "set_config", "nextval", "setval", "dblink", "query_to_xml", "query_to_xml_and_xmlschema",
        "query_to_xmlschema", "cursor_to_xml", "cursor_to_xmlschema", "table_to_xml", "database_to_xml",
        "schema_to_xml", "txid_current", "current_setting", "lo_import", "lo_export",
        # SQLite: loading code, touching files
        "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "zipfile", "fsdir",
    }
)  # fmt: skip
_DENY_PREFIXES = ("pg_", "lo_", "dblink")
_ALLOW_PG = frozenset({"pg_typeof", "pg_column_size", "pg_size_pretty"})


def _dialect(database_url: str) -> str:
    scheme = database_url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        return "postgres"
    raise UserError(f"sql_query supports sqlite:///path.db and postgresql://… URLs, got {database_url!r}")


def _denied_function(name: str) -> bool:
    name = name.lower().rsplit(".", 1)[-1]
    if name in _ALLOW_PG:
        return False
    return name in _DENY_FUNCTIONS or name.startswith(_DENY_PREFIXES)


def check_query(query: str, dialect: str, tool: str = "sql_query") -> str:
    """The SQL to run for ``query`` if it is a single read-only ``SELECT``; else ``ToolRefused``.

    The returned SQL is regenerated from the checked syntax tree (what runs is what was checked).
    """
    try:
        import sqlglot
        from sqlglot import exp
        from sqlglot.errors import SqlglotError
    except ImportError:
        raise UserError("sql_query needs the SQL parser sqlglot: pip install 'wflo[tools]'") from None

    def refuse(reason: str) -> ToolRefused:
        return ToolRefused(tool=tool, reason=reason)

    if not isinstance(query, str) or not query.strip():
        raise refuse("the query must be a non-empty SQL string")
    try:
        statements = [s for s in sqlglot.parse(query, read=dialect) if s is not None]
    except SqlglotError as exc:
        raise refuse(f"the query could not be parsed as {dialect} SQL: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise refuse(f"exactly one statement is allowed, got {len(statements)}")
    tree = statements[0]
    if type(tree).__name__ not in _ROOTS:
        raise refuse(f"only SELECT queries are allowed, got {tree.key.upper()}")
    forbidden = tuple(cls for n in _FORBIDDEN_NODES if isinstance(cls := getattr(exp, n, None), type))
    for node in tree.walk():
        if isinstance(node, forbidden):
            what = "SELECT … INTO" if isinstance(node, exp.Into) else node.key.upper()
            if isinstance(node, exp.Lock):
                what = "FOR UPDATE/FOR SHARE"
            raise refuse(f"the query is read-only: {what} is not allowed")
        if isinstance(node, exp.Func):
            names = {node.name} if isinstance(node, exp.Anonymous) else {node.sql_name(), type(node).__name__}
            for fname in names:
                if fname and _denied_function(fname):
                    raise refuse(f"the function {fname.lower()}() is not allowed")
    if isinstance(tree, exp.Select) and tree.args.get("locks"):
        raise refuse("the query is read-only: FOR UPDATE/FOR SHARE is not allowed")
    return tree.sql(dialect=dialect)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _result(description: Any, rows: list[Any], max_rows: int) -> dict[str, Any]:
    columns = [d[0] for d in description or ()]
    return {
        "columns": columns,
        "rows": [[_jsonable(v) for v in row] for row in rows[:max_rows]],
        "truncated": len(rows) > max_rows,
    }


# SQLite authorizer: reads only (sqlite3 module constants, named for the reader).
_SQLITE_ALLOWED_ACTIONS = frozenset(
    getattr(sqlite3, n) for n in ("SQLITE_SELECT", "SQLITE_READ", "SQLITE_FUNCTION", "SQLITE_RECURSIVE")
)


def _sqlite_path(database_url: str) -> str:
    rest = database_url.split(":", 1)[1]
    if not rest.startswith("///"):
        raise UserError(
            f"a SQLite URL looks like sqlite:///relative.db or sqlite:////abs/path.db, got {database_url!r}"
        )
    path = unquote(rest[3:].split("?", 1)[0])
    if not path or path == ":memory:":
        raise UserError("sql_query needs a SQLite database file (an in-memory database is empty when opened read-only)")
    return path


def _run_sqlite(tool: str, path: str, sql: str, max_rows: int, timeout: float) -> dict[str, Any]:
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
    except sqlite3.Error as exc:
        raise ToolRefused(tool=tool, reason=f"cannot open the database read-only: {exc}") from None
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)

        def authorize(action: int, arg1: Any, arg2: Any, db: Any, trigger: Any) -> int:
            if action == sqlite3.SQLITE_FUNCTION and isinstance(arg2, str) and _denied_function(arg2):
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK if action in _SQLITE_ALLOWED_ACTIONS else sqlite3.SQLITE_DENY

        conn.set_authorizer(authorize)
        deadline = time.monotonic() + timeout
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        try:
            cur = conn.execute(sql)
            rows = cur.fetchmany(max_rows + 1)
        except sqlite3.OperationalError as exc:
            if time.monotonic() > deadline and "interrupt" in str(exc):
                raise ToolRefused(tool=tool, reason=f"the query ran longer than {timeout:g}s and was stopped") from None
            raise ToolRefused(tool=tool, reason=f"the database refused the query: {exc}") from None
        except sqlite3.Error as exc:
            raise ToolRefused(tool=tool, reason=f"the database refused the query: {exc}") from None
        return _result(cur.description, rows, max_rows)
    finally:
        conn.close()


def _run_postgres(tool: str, url: str, sql: str, max_rows: int, timeout: float) -> dict[str, Any]:
    try:
        import psycopg
    except ImportError:
        raise UserError("sql_query on PostgreSQL needs psycopg: pip install 'wflo[postgres]'") from None
    conninfo = "postgresql" + url[url.index(":") :] if url.split(":", 1)[0].lower() != "postgresql" else url
    try:
        conn = psycopg.connect(conninfo, autocommit=False, connect_timeout=max(1, int(timeout + 0.999)))
    except psycopg.Error as exc:
        raise ToolRefused(tool=tool, reason=f"cannot connect to the database: {exc}") from None
    try:
        with conn.cursor() as cur:
            # SET TRANSACTION must be the first statement of the transaction psycopg opens here.
            cur.execute("SET TRANSACTION READ ONLY")
            ms = max(1, int(timeout * 1000))
            cur.execute(f"SET LOCAL statement_timeout = {ms}")
            cur.execute(f"SET LOCAL lock_timeout = {ms}")
            cur.execute(f"SET LOCAL idle_in_transaction_session_timeout = {ms + 1000}")
            try:
                cur.execute(sql)
                rows = cur.fetchmany(max_rows + 1) if cur.description else []
            except psycopg.errors.QueryCanceled:
                raise ToolRefused(tool=tool, reason=f"the query ran longer than {timeout:g}s and was stopped") from None
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ToolRefused(tool=tool, reason=f"the database refused the query: {first}") from None
            return _result(cur.description, rows, max_rows)
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


def sql_query(
    database_url: str,
    *,
    max_rows: int = 1000,
    timeout: float | str = "5s",
    name: str = "sql_query",
    description: str | None = None,
    approval: Approval | None = None,
    risk: str = "medium",
) -> Tool[[str], dict[str, Any]]:
    """A tool that runs one read-only ``SELECT`` on ``database_url`` and returns its rows.

    Args:
        database_url: ``sqlite:///path.db`` (opened read-only) or ``postgresql://…``.
        max_rows: rows returned at most; more are cut and the result says ``truncated: true``.
        timeout: how long the query may run (``"5s"``, ``"500ms"``); then it is stopped.
        name: the tool's name (journal, manifest, OpenAI schema).
        description: what the model is told (default: a sentence naming the dialect and limits).
        approval: an optional ``wflo.Approval`` for the calls.
        risk: the manifest's risk level (``"medium"``).

    The tool takes ``query: str`` and returns ``{"columns": [...], "rows": [[...]], "truncated": bool}``;
    it raises ``ToolRefused`` for anything but a single read-only query, and when a limit is hit.
    """
    dialect = _dialect(database_url)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise UserError(f"max_rows must be a positive integer, got {max_rows!r}")
    seconds = parse_duration(timeout, "timeout")
    path = _sqlite_path(database_url) if dialect == "sqlite" else None
    label = "SQLite" if dialect == "sqlite" else "PostgreSQL"

    def run_query(query: str) -> dict[str, Any]:
        sql = check_query(query, dialect, name)
        if path is not None:
            return _run_sqlite(name, path, sql, max_rows, seconds)
        return _run_postgres(name, database_url, sql, max_rows, seconds)

    run_query.__name__ = name
    text = description or (
        f"Run one read-only SQL SELECT on a {label} database and get "
        f'{{"columns", "rows", "truncated"}} back (at most {max_rows} rows, {seconds:g}s). '
        "Writes, multiple statements and side-effecting functions are refused."
    )
    return Tool(run_query, name=name, description=text, risk=risk, approval=approval)
