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

Limits, each enforced while the rows are fetched, never after the result is in memory:

- ``timeout``: SQLite, a progress-handler deadline; PostgreSQL, ``statement_timeout``.
- ``max_rows``: rows are read one at a time (SQLite) or in small batches from a server-side
  cursor (PostgreSQL) and reading stops after ``max_rows + 1``; the result says ``truncated``.
- ``max_cell_bytes``: SQLite, ``SQLITE_LIMIT_LENGTH`` on the connection, so SQLite itself
  refuses to build or read a larger string or blob (``randomblob(10**9)`` fails before
  allocating); PostgreSQL, the query is wrapped so the server measures each value's text form
  (what would cross the wire) and sends NULL in place of one over the cap, which is refused.
- ``max_result_bytes``: the values' total, counted row by row as they arrive.

A cap that is hit refuses the call (``ToolRefused``, naming the cap and its keyword) rather
than returning a silently incomplete answer.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .._errors import UserError
from ..approvals import Approval, parse_duration
from ._errors import ToolRefused
from ._manifest import Capabilities, Effects
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
        # ... functions that run a query given as a string, which the parser never sees: core
        # full-text search's, and tablefunc's and xml2's when those extensions are installed
        "ts_stat", "ts_rewrite", "crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby", "xpath_table",
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


@dataclass(frozen=True)
class _Caps:
    """The limits of one ``sql_query`` tool (see :func:`sql_query`)."""

    rows: int
    cell_bytes: int
    result_bytes: int
    timeout: float

    @property
    def engine_bytes(self) -> int:
        """The largest value SQLite may build or read while running the query."""
        return max(self.cell_bytes, self.result_bytes)


def _size(value: Any) -> int:
    """Bytes a fetched value stands for (SQLite: as stored; text is counted in UTF-8)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    return 8 if value is not None else 0


def _cell_refused(tool: str, caps: _Caps, column: str | None, size: int | None, inside: bool = False) -> ToolRefused:
    where = f"column {column!r} has a value" if column else "a value in the result"
    how = f" of {size} bytes" if size is not None else ""
    if inside:
        where, how = "the query makes or reads a value", f" of more than {caps.engine_bytes} bytes"
    return ToolRefused(
        tool=tool,
        reason=(
            f"{where}{how} over max_cell_bytes={caps.cell_bytes}; select less of it (substr(), length()) "
            f"or raise the cap with sql_query(..., max_cell_bytes=...)"
        ),
    )


def _total_refused(tool: str, caps: _Caps, rows: int) -> ToolRefused:
    return ToolRefused(
        tool=tool,
        reason=(
            f"the result is over max_result_bytes={caps.result_bytes} after {rows} row(s); select fewer rows "
            f"or columns (LIMIT, WHERE) or raise the cap with sql_query(..., max_result_bytes=...)"
        ),
    )


class _Collector:
    """Rows as they arrive: stops at ``max_rows + 1`` and refuses past the byte caps."""

    def __init__(self, tool: str, caps: _Caps, columns: list[str]) -> None:
        self.tool, self.caps, self.columns = tool, caps, columns
        self.rows: list[list[Any]] = []
        self.total = 0
        self.truncated = False

    def add(self, row: Any, sizes: Any = None) -> bool:
        """Take one row (``sizes``: the values' sizes when the database measured them); False
        once ``max_rows`` are taken and another row exists."""
        if len(self.rows) == self.caps.rows:
            self.truncated = True
            return False
        sizes = [_size(v) for v in row] if sizes is None else [int(n or 0) for n in sizes]
        for i, size in enumerate(sizes):
            if size > self.caps.cell_bytes:
                raise _cell_refused(self.tool, self.caps, self.columns[i] if i < len(self.columns) else None, size)
        self.total += sum(sizes)
        if self.total > self.caps.result_bytes:
            raise _total_refused(self.tool, self.caps, len(self.rows) + 1)
        self.rows.append([_jsonable(v) for v in row])
        return True

    def result(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "truncated": self.truncated}


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


def _run_sqlite(tool: str, path: str, sql: str, caps: _Caps) -> dict[str, Any]:
    timeout = caps.timeout
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
    except sqlite3.Error as exc:
        raise ToolRefused(tool=tool, reason=f"cannot open the database read-only: {exc}") from None
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        # SQLite refuses to make or read a string/blob (or a row record it sorts) over this
        # before allocating it, so randomblob(10**9) never exists. Not the cell cap itself: a
        # stored value over the cap must stay usable inside the query (substr(), length()).
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, caps.engine_bytes)

        def authorize(action: int, arg1: Any, arg2: Any, db: Any, trigger: Any) -> int:
            if action == sqlite3.SQLITE_FUNCTION and isinstance(arg2, str) and _denied_function(arg2):
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK if action in _SQLITE_ALLOWED_ACTIONS else sqlite3.SQLITE_DENY

        conn.set_authorizer(authorize)
        deadline = time.monotonic() + timeout
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        try:
            cur = conn.execute(sql)
            out = _Collector(tool, caps, [d[0] for d in cur.description or ()])
            while (row := cur.fetchone()) is not None and out.add(row):
                pass
        except sqlite3.OperationalError as exc:
            if time.monotonic() > deadline and "interrupt" in str(exc):
                raise ToolRefused(tool=tool, reason=f"the query ran longer than {timeout:g}s and was stopped") from None
            raise ToolRefused(tool=tool, reason=f"the database refused the query: {exc}") from None
        except sqlite3.DataError as exc:
            if "too big" in str(exc):
                raise _cell_refused(tool, caps, None, None, inside=True) from None
            raise ToolRefused(tool=tool, reason=f"the database refused the query: {exc}") from None
        except sqlite3.Error as exc:
            raise ToolRefused(tool=tool, reason=f"the database refused the query: {exc}") from None
        return out.result()
    finally:
        conn.close()


def _measured(sql: str, n: int, cap: int) -> str:
    """``sql`` wrapped so the server measures each value's text form (what psycopg would
    receive) and sends NULL for one over ``cap``: value i is column 2i, its size 2i+1.
    Columns are renamed by position, so duplicate or odd names cannot break the wrapper."""
    names = ", ".join(f"c{i}" for i in range(n))
    sizes = ", ".join(f"octet_length(q.c{i}::text) AS n{i}" for i in range(n))
    parts = ", ".join(f"CASE WHEN s.n{i} > {cap} THEN NULL ELSE q.c{i} END, s.n{i}" for i in range(n))
    # OFFSET 0 keeps the planner from inlining the subqueries, which would compute each
    # value (a 200 MB repeat(), say) and its text form once per reference instead of once.
    return (
        f"SELECT {parts} FROM (SELECT * FROM ({sql}) AS q0 OFFSET 0) AS q({names}) "
        f"CROSS JOIN LATERAL (SELECT {sizes} OFFSET 0) AS s"
    )


def _run_postgres(tool: str, url: str, sql: str, caps: _Caps) -> dict[str, Any]:
    timeout = caps.timeout
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
                # The columns first (LIMIT 0 runs nothing), then the measured query through a
                # server-side cursor in small batches: a client cursor would receive every row
                # before the first fetchmany.
                cur.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0")
                columns = [d.name for d in cur.description or ()]
                out = _Collector(tool, caps, columns)
                if columns:
                    with conn.cursor(name="wflo_sql_query") as rows:
                        rows.execute(_measured(sql, len(columns), caps.cell_bytes))
                        batch = max(1, min(caps.rows + 1, 64))
                        going = True
                        while going and (chunk := rows.fetchmany(batch)):
                            for row in chunk:
                                if not out.add(row[0::2], row[1::2]):
                                    going = False
                                    break
            except psycopg.errors.QueryCanceled:
                raise ToolRefused(tool=tool, reason=f"the query ran longer than {timeout:g}s and was stopped") from None
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ToolRefused(tool=tool, reason=f"the database refused the query: {first}") from None
            return out.result()
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


def sql_query(
    database_url: str,
    *,
    max_rows: int = 1000,
    max_cell_bytes: int = 100_000,
    max_result_bytes: int = 1_000_000,
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
        max_cell_bytes: the largest value (string, blob; on PostgreSQL any value's text form)
            the query may return; a larger one refuses the call, checked by the database
            before the value is sent.
        max_result_bytes: the most the values of all returned rows may add up to; past it
            the call is refused, checked row by row as they arrive.
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
    for key, value in (("max_cell_bytes", max_cell_bytes), ("max_result_bytes", max_result_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive integer (bytes), got {value!r}")
    seconds = parse_duration(timeout, "timeout")
    caps = _Caps(rows=max_rows, cell_bytes=max_cell_bytes, result_bytes=max_result_bytes, timeout=seconds)
    path = _sqlite_path(database_url) if dialect == "sqlite" else None
    label = "SQLite" if dialect == "sqlite" else "PostgreSQL"

    def run_query(query: str) -> dict[str, Any]:
        sql = check_query(query, dialect, name)
        if path is not None:
            return _run_sqlite(name, path, sql, caps)
        return _run_postgres(name, database_url, sql, caps)

    run_query.__name__ = name
    text = description or (
        f"Run one read-only SQL SELECT on a {label} database and get "
        f'{{"columns", "rows", "truncated"}} back (at most {max_rows} rows, {max_cell_bytes} bytes a value, '
        f"{max_result_bytes} bytes in all, {seconds:g}s). "
        "Writes, multiple statements and side-effecting functions are refused."
    )
    if path is None:
        where = urlsplit(database_url)
        declared = Capabilities(network=(f"{where.hostname or 'localhost'}:{where.port or 5432}",))
    else:
        declared = Capabilities(read=(path,))
    effects = Effects(read_only=True, idempotent=True)
    return Tool(run_query, name=name, description=text, risk=risk, approval=approval, effects=effects,
                capabilities=declared)  # fmt: skip
