"""PostgreSQL backend: the scale-out store (many workers on many machines)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from .._errors import ConfigurationError, LeaseLost, StoreUnavailableError
from ._base import RELAXED_MARKERS, Store, StoreOp, run_ops
from ._pool import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT
from ._records import RUN_COLUMNS, Head, NewEvent, RunRecord, iso, now_iso
from ._stream import cursor_name

# The store's UTC text time form, computed by the server (its clock judges leases).
_PG_TIME = (
    """to_char(clock_timestamp() AT TIME ZONE 'UTC' + make_interval(secs => %s), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
)

# Commit modes. Most commits wait for the WAL flush (``synchronous_commit`` as the server
# has it, ``on`` by default): a few milliseconds each, most of what a short run costs. Three
# commits here skip that wait (``set_config('synchronous_commit', 'off', true)``, inside the
# same statement or transaction: no extra round trip):
#
# - the start of a run its caller executes at once (``create_run`` with an owner: ``.run()``,
#   a child's ``.run()``, ``wflo.init()``);
# - a claim (``claim_next``, ``claim``): a lease, nothing more;
# - the marker that an execution began (``run.started``/``run.resumed`` appended alone,
#   ``RELAXED_MARKERS`` in ``_base``).
#
# Why that is safe. PostgreSQL's WAL is one sequence: a synchronous commit flushes it up to
# its own commit record, so every commit before it (asynchronous ones included) is durable
# when it returns. Nothing outside the run depends on these three before the run's next
# write, and every write a run makes that anything depends on commits synchronously: a step's
# result, a budget reservation before an LLM call, an approval request, a decision, the
# run's end (whose result goes back to the caller). A client that dies (``kill -9`` of a
# worker) loses nothing: the commit is in the server's WAL. Only a server crash (or a failover)
# can lose them, and only within about 3 x ``wal_writer_delay`` of their commit:
#
# - a lost start: the caller still runs the body; its next write is fenced on the run's head
#   and owner and finds no run, so the caller gets ``LeaseLost`` (an error, never a result),
#   and a step that ran before that write may run again if the caller retries: at least
#   once, as for any step whose record was not written. A caller that died in the same crash
#   (one machine for both) leaves nobody to resume the run: it is as if never started, but
#   for what its steps did in that window;
# - a lost claim: the run is again queued, waiting or held by the lapsed lease it had; the
#   claimer's next append is fenced on the lease and raises ``LeaseLost``; the next claim
#   takes the run again. A queue's count of running runs (and a rate limit's ``started_at``)
#   is then briefly one lower than what executes, as with a lease that lapsed;
# - a lost marker: the run's head and projection roll back with it (one transaction), the
#   next append is fenced on that head and raises ``LeaseLost``; the run is resumed after its
#   lease lapses. No other chain refers to it, and anything that read it and then committed
#   (an audit checkpoint records itself on the system chain before its file is written)
#   flushed it first. What only reads (a run listing, ``wflo audit export``, which writes its
#   files before its own record commits) can see such an event in that window and the store
#   then lose it: an export taken while the run executes, in the last ~600 ms before a crash.
#
# Only a statement or transaction of its own is relaxed: inside a caller's transaction (a store
# call from a ``write``) it commits as that transaction does (``_idle``).
#
# What stays synchronous: enqueueing (``.start()`` returns a handle that a worker must be able
# to find: ``create_run`` without an owner), every other append, every ``write``/``write_batch``
# (steps' side tables, reservations, approvals, decisions, wake-ups), heartbeats and releases.

# A new run and its first events in one statement: nothing is inserted if the id exists, in
# which case the existing row is returned (created = false). The relaxed form: see Commit modes.
_CREATE_RUN_TEMPLATE = f"""
WITH r AS (
    INSERT INTO runs ({RUN_COLUMNS}, queue, priority, partition_key, started_at)
    VALUES (%s, %s, %s, %s, NULL, NULL, %s, %s, %s, %s,
            CASE WHEN %s THEN {_PG_TIME} END, 0, NULL, %s, %s, %s, %s, %s, NULL, %s, %s, %s, %s)
    ON CONFLICT (id) DO NOTHING
    RETURNING {RUN_COLUMNS}, queue
), e AS (
    INSERT INTO events (chain, seq, type, at, data, prev_hash, hash)
    SELECT r.id, u.seq, u.type, u.at, u.data, u.prev, u.hash
      FROM r, unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
           AS u(seq, type, at, data, prev, hash)
), n AS (
    SELECT pg_notify('wflo_runs', r.id) FROM r WHERE %s
){{relax_cte}}
SELECT {RUN_COLUMNS}, queue, true, (SELECT count(*) FROM n) FROM r{{relax_from}}
UNION ALL
SELECT {RUN_COLUMNS}, queue, false, 0 FROM runs WHERE id = %s AND NOT EXISTS (SELECT 1 FROM r)
"""
_RELAX = "set_config('synchronous_commit', 'off', true)"
_CREATE_RUN = _CREATE_RUN_TEMPLATE.format(relax_cte="", relax_from="")
_CREATE_RUN_RELAXED = _CREATE_RUN_TEMPLATE.format(relax_cte=f", s AS (SELECT {_RELAX})", relax_from=", s")

_APPEND = (
    "SELECT wflo_append(%s::text, %s::bigint, %s::text, %s::bigint, %s::text, %s::text, %s::text, %s::boolean, "
    "%s::text, %s::text, %s::boolean, %s::text, %s::text, %s::bigint[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::text[])"
)
_APPEND_RELAXED = f"{_APPEND}, {_RELAX}"

# A claim (``claim``): its update, or the row as it is when the update took nothing (not
# due, another's, ended); relaxed when it took the run (see Commit modes).
_CLAIM = f"""
WITH u AS ({{update}} RETURNING {RUN_COLUMNS}), s AS (SELECT {_RELAX})
SELECT {RUN_COLUMNS} FROM u, s
UNION ALL
SELECT {RUN_COLUMNS} FROM runs WHERE id = ? AND NOT EXISTS (SELECT 1 FROM u)
"""

_LEASE_LOST = "WF001"
_NO_SUCH_STATEMENT = b"26000"  # invalid_sql_statement_name: a prepared statement is gone
_ALREADY_PREPARED = b"42P05"  # duplicate_prepared_statement

T = TypeVar("T")


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigurationError("the PostgreSQL store needs psycopg 3: pip install 'wflo[postgres]'") from None
    return psycopg


class PostgresStore(Store):
    """A store in a PostgreSQL database.

    Workers claim runs with ``FOR UPDATE SKIP LOCKED`` (no two take the same run, none waits
    for another) and wake on ``LISTEN wflo_runs`` instead of polling. A connection the server
    drops (restart, ``pg_terminate_backend``) is reopened and the operation retried; appends
    are fenced on the run's head, so a retried append can never write a link twice.

    Connections come from a ``psycopg_pool`` pool of at most ``pool_size`` per process (plus
    one for ``LISTEN``), one per transaction. Lease times are the server's
    ``clock_timestamp()``, so workers on machines with skewed clocks agree on expiry.
    """

    dialect = "postgresql"
    placeholder = "%s"
    for_update = " FOR UPDATE"
    # The range of the base class follows the database's collation, which may not order
    # ids by their characters; LIKE uses the text_pattern_ops index of migration m010.
    _prefix_sql = "id LIKE ? ESCAPE '!'"

    def _prefix_params(self, prefix: str) -> tuple[str, ...]:
        return (prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%",)

    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        pooler: str = "none",
        listen_url: str = "",
        poll_interval: float = 0.2,
    ) -> None:
        super().__init__(url, pool_size=pool_size, pool_timeout=pool_timeout)
        self._psycopg = _psycopg()
        # Behind PgBouncer in transaction mode (pooler="transaction") each statement may run
        # on a different server connection: psycopg's automatic prepared statements would
        # name statements another connection never saw (PgBouncer < 1.21 cannot track them),
        # and LISTEN would subscribe some pooled connection, not ours. So prepared
        # statements are off and the change feed LISTENs on ``listen_url`` (a direct
        # connection to the primary) or, without one, looks again every ``poll_interval``.
        self.pooler = pooler
        self.listen_url = listen_url
        self.poll_interval = poll_interval

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
        if self.pooler == "transaction":
            kwargs["prepare_threshold"] = None  # never prepare: see __init__
        if "application_name" not in self.url:
            kwargs["application_name"] = "wflo"  # so operators can find wflo in pg_stat_activity
        return kwargs

    def _execute_prepared(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        # psycopg prepares a statement by itself only at its fifth use on one connection
        # (``prepare_threshold``), and the pool hands its connections out in turn: a statement
        # sent once per wake-up was parsed and planned every time (~2 ms of a claim). Not
        # behind a transaction pooler, which may not know the connection's prepared statements.
        cur.execute(self._sql(sql), tuple(params), prepare=None if self.pooler == "transaction" else True)
        return cur

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, **self._kwargs())
        except self._psycopg.Error as exc:
            raise StoreUnavailableError(url=_redact(self.url), detail=_first_line(exc)) from None

    def _make_pool(self) -> Any:
        return _PsycopgPool(self)

    def _conn_broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def _clock(self, cur: Any) -> datetime:
        # clock_timestamp(), not now(): now() is the transaction's start, which a long
        # transaction would leave behind.
        cur.execute("SELECT clock_timestamp()")
        moment: datetime = cur.fetchone()[0]
        return moment.astimezone(UTC)

    def ask_now(self, cur: Any) -> Callable[[], str]:
        own = cur.connection.cursor()  # its own cursor: the answer must outlive later statements
        own.execute("SELECT clock_timestamp()")

        def answer() -> str:
            try:
                moment: datetime = own.fetchone()[0]
            finally:
                own.close()
            return iso(moment.astimezone(UTC))

        return answer

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN")

    def _begin_relaxed(self, cur: Any) -> None:
        # Two statements in one message (no parameters: the simple query protocol), so the
        # relaxed transaction costs no round trip more than BEGIN alone. See Commit modes.
        if self._idle(cur.connection):
            cur.execute("BEGIN; SET LOCAL synchronous_commit TO off")
        else:
            self._begin(cur)

    server_clock = True

    def _time_sql(self, clock: datetime | None, offset_seconds: float = 0.0) -> tuple[str, list[Any]]:
        # A scalar subquery: evaluated once per statement (clock_timestamp() is volatile: bare,
        # it would be read again for every row and keep a comparison off the indexes).
        return f"(SELECT {_PG_TIME.replace('%s', '?')})", [offset_seconds]

    def _batch(self, cur: Any) -> Any:
        conn = cur.connection
        if conn.info.pipeline_status == self._psycopg.pq.PipelineStatus.OFF:
            return contextlib.nullcontext()
        return conn.pipeline()  # nested: its end sends a sync and reads every answer

    def _claim_tx(self, fn: Callable[[Any], Callable[[], T]], *, relaxed: bool = True) -> T:
        if getattr(self._local, "held", None) is not None:
            return super()._claim_tx(fn, relaxed=relaxed)  # inside a caller's transaction: commits with it

        def go() -> T:
            with self._connection() as conn:
                cur, end = conn.cursor(), conn.cursor()
                try:
                    with conn.pipeline():
                        cur.execute("BEGIN")
                        if relaxed:
                            cur.execute(f"SELECT {_RELAX}")  # a claim: see Commit modes
                        then = fn(cur)
                        end.execute("COMMIT")
                    return then()
                except BaseException:
                    self._roll_back(conn)
                    raise
                finally:
                    cur.close()
                    end.close()

        return self._retrying(go)

    def claim(self, run_id: str, owner: str, lease_seconds: float, *, woken: bool = False) -> RunRecord:
        """One statement (the update, the row as it is if it took nothing, the relaxed commit:
        see Commit modes), prepared on each connection, and after it the reads of
        ``read_ahead`` (in the same implicit transaction: after the update took the run's row),
        all in one round trip. The reads' answers are kept only if the run is now ours."""
        if getattr(self._local, "held", None) is not None:
            return super().claim(run_id, owner, lease_seconds, woken=woken)  # commits with the caller's
        update, params = self._claim_update(None, run_id, owner, lease_seconds, woken)
        ahead = getattr(self._local, "ahead", None)
        reads = ahead.reads if ahead is not None else []

        def go() -> tuple[RunRecord, list[list[tuple[Any, ...]]]]:
            with self._connection() as conn:
                cur = conn.cursor()
                more = [conn.cursor() for _ in reads]
                try:
                    with conn.pipeline():  # statements up to its sync: one implicit transaction
                        self._execute_prepared(cur, _CLAIM.format(update=update), [*params, run_id])
                        for c, (sql, read_params) in zip(more, reads, strict=True):
                            self._execute_prepared(c, sql, read_params)
                    return self._claimed_record(cur.fetchone(), run_id), [c.fetchall() for c in more]
                except BaseException:
                    self._roll_back(conn)
                    raise
                finally:
                    for c in (cur, *more):
                        c.close()

        record, answers = self._retrying(go)
        if ahead is not None and record.lease_owner == owner and record.status == "running":
            ahead.answers.update(zip(reads, answers, strict=True))  # only a claim that took the run
        return record

    def _warm(self, conn: Any) -> None:
        """A new pooled connection prepares a woken run's claim (see ``_execute_prepared``) on
        a run that cannot exist: the connection the pool hands out at a timer's deadline is
        rarely the one that claimed before (idle connections go out first in, first out), and
        a statement's first use on a connection is parsed and planned there, milliseconds on a
        busy server. Nothing is written; a store not migrated yet (no ``runs``) is skipped."""
        if self.pooler == "transaction":
            return
        prepared = _PREPARED.setdefault(conn, set())
        for stmt in (*_APPEND_ALONE, *_CREATE_ALONE):  # the statements of ``_direct``
            try:
                with conn.lock:
                    self._prepare(conn, stmt, prepared)
            except self._psycopg.Error:
                break  # not migrated yet: prepared at first use instead
        update, params = self._claim_update(None, "", "", 0.0, True)
        try:
            conn.execute(self._sql(_CLAIM.format(update=update)), (*params, ""), prepare=True)
        except self._psycopg.Error:
            if not self._idle(conn):
                conn.rollback()

    def _alone(self, conn: Any) -> bool:
        """Whether a statement on ``conn`` may go straight to libpq (``_direct``): outside any
        transaction and pipeline, with text in UTF-8 (as ``_direct`` encodes it)."""
        pgconn = conn.pgconn
        return bool(
            pgconn.transaction_status == _IDLE
            and pgconn.pipeline_status == _PIPELINE_OFF
            and pgconn.parameter_status(b"client_encoding") == b"UTF8"
        )

    def _direct(self, conn: Any, stmt: _Statement, params: Sequence[Any]) -> Any:
        """Run ``stmt`` alone on an idle ``conn`` (see ``_alone``), in one round trip, and
        return its answer (a libpq result: see ``_value``, ``_row``). The path of the hot
        append and of a run's creation (issue 20): psycopg's cursor (a cursor object per
        statement, its adapters, its prepared-statement bookkeeping) cost the client more CPU
        than the statement's round trip.

        The statement is prepared once per connection under a name of its own (its text's
        hash), outside psycopg's cache: by ``_warm``, or at its first use, pipelined with that
        use (no round trip more). Behind a transaction pooler it is sent unprepared (as
        psycopg would: see ``__init__``). A statement the session lost (``DEALLOCATE ALL``,
        ``DISCARD ALL``) is refused by the server before anything runs: it is prepared and
        sent again. Errors are psycopg's (the classes and SQLSTATEs a cursor raises); a
        connection lost on the way raises ``OperationalError`` and ``_connection`` discards
        it; an interrupt is handled by psycopg's ``wait`` (the query is cancelled)."""
        psycopg = self._psycopg
        # Text (most parameters) inline, the rest through ``_text``: 20 calls less per append.
        values = [v.encode() if type(v) is str and "\x00" not in v else _text(v) for v in params]
        pgconn = conn.pgconn
        with conn.lock:
            if pgconn.status != _CONNECTION_OK:
                raise psycopg.OperationalError("the connection is closed")
            if self.pooler == "transaction":
                pgconn.send_query_params(stmt.query, values)
                return _check(conn.wait(psycopg.generators.execute(pgconn)), stmt, _TUPLES_OK)
            prepared = _PREPARED.get(conn)
            if prepared is None:
                prepared = _PREPARED[conn] = set()
            if stmt.name in prepared:
                pgconn.send_query_prepared(stmt.name, values)
                results = conn.wait(psycopg.generators.execute(pgconn))
                if not (results and results[-1].error_field(_SQLSTATE) == _NO_SUCH_STATEMENT):
                    return _check(results, stmt, _TUPLES_OK)
                prepared.discard(stmt.name)  # the session lost it: nothing ran
            return self._prepare_and_run(conn, stmt, values, prepared)

    def _prepare_and_run(self, conn: Any, stmt: _Statement, values: list[bytes | None], prepared: set[bytes]) -> Any:
        """Prepare ``stmt`` on ``conn`` and run it, pipelined: one round trip."""
        psycopg = self._psycopg
        pgconn = conn.pgconn
        if not psycopg.Pipeline.is_supported():  # libpq < 14: the preparation on its own first
            self._prepare(conn, stmt, prepared)
            pgconn.send_query_prepared(stmt.name, values)
            return _check(conn.wait(psycopg.generators.execute(pgconn)), stmt, _TUPLES_OK)
        pgconn.enter_pipeline_mode()
        try:
            pgconn.send_prepare(stmt.name, stmt.query)
            pgconn.send_query_prepared(stmt.name, values)
            pgconn.pipeline_sync()
            made, ran, synced = conn.wait(_pipelined(psycopg.generators, pgconn))
            pgconn.exit_pipeline_mode()
        except BaseException:
            # Answers may be left unread: the connection is in no state to be used again.
            pgconn.finish()
            raise
        if not (synced and synced[-1].status == _PIPELINE_SYNC):
            pgconn.finish()
            raise psycopg.InterfaceError(f"no pipeline sync after {stmt.sql[:40]!r}")
        if made and made[-1].error_field(_SQLSTATE) == _ALREADY_PREPARED:
            prepared.add(stmt.name)  # the session has it under this name (its text's hash)
            pgconn.send_query_prepared(stmt.name, values)
            return _check(conn.wait(psycopg.generators.execute(pgconn)), stmt, _TUPLES_OK)
        _check(made, stmt, _COMMAND_OK)
        prepared.add(stmt.name)
        return _check(ran, stmt, _TUPLES_OK)

    # ----------------------------------------------------------------- on the event loop
    def loop_writer(self, key: Any) -> _LoopWriter | None:
        """An async run's appends written from its event loop (see ``Store.loop_writer``):
        a pooled connection idle at once (no wait for one) and ``key``'s place in the order of
        the store's threads (nothing of the run queued or running there), else ``None``. Not
        inside a transaction this thread holds, nor after a fork (the parent's pool)."""
        if getattr(self._local, "held", None) is not None or self._pool_pid != os.getpid():
            return None
        pool = self._pool
        if not isinstance(pool, _PsycopgPool):
            return None
        executor = self._offloader()
        token = executor.take(key)
        if token is None:
            return None
        conn = pool.get_idle()
        if conn is None:
            executor.give_back(key, token)
            return None
        return _LoopWriter(self, conn, executor, key, token)

    def _direct_gen(self, conn: Any, stmt: _Statement, params: Sequence[Any]) -> Any:
        """``_direct`` as one psycopg generator (it yields what it waits for on ``conn``'s
        socket, ``psycopg.waiting``'s protocol), to be driven from the event loop
        (:class:`_Exchange`): the statement sent on ``conn`` (non-blocking, as psycopg keeps
        every connection), its answer read as the socket becomes ready. The same statements,
        preparation (and re-preparation after ``DEALLOCATE ALL``), unprepared behind a
        transaction pooler, the same errors. The caller owns ``conn`` alone (a pooled
        connection taken for it)."""
        psycopg = self._psycopg
        execute = psycopg.generators.execute
        values = [v.encode() if type(v) is str and "\x00" not in v else _text(v) for v in params]
        pgconn = conn.pgconn
        if pgconn.status != _CONNECTION_OK:
            raise psycopg.OperationalError("the connection is closed")
        if self.pooler == "transaction":
            pgconn.send_query_params(stmt.query, values)
            return _check((yield from execute(pgconn)), stmt, _TUPLES_OK)
        prepared = _PREPARED.get(conn)
        if prepared is None:
            prepared = _PREPARED[conn] = set()
        if stmt.name in prepared:
            pgconn.send_query_prepared(stmt.name, values)
            results = yield from execute(pgconn)
            if not (results and results[-1].error_field(_SQLSTATE) == _NO_SUCH_STATEMENT):
                return _check(results, stmt, _TUPLES_OK)
            prepared.discard(stmt.name)  # the session lost it: nothing ran
        if not psycopg.Pipeline.is_supported():  # libpq < 14: the preparation on its own first
            pgconn.send_prepare(stmt.name, stmt.query)
            made = yield from execute(pgconn)
            if not (made and made[-1].error_field(_SQLSTATE) == _ALREADY_PREPARED):
                _check(made, stmt, _COMMAND_OK)
            prepared.add(stmt.name)
            pgconn.send_query_prepared(stmt.name, values)
            return _check((yield from execute(pgconn)), stmt, _TUPLES_OK)
        pgconn.enter_pipeline_mode()
        try:
            pgconn.send_prepare(stmt.name, stmt.query)
            pgconn.send_query_prepared(stmt.name, values)
            pgconn.pipeline_sync()
            made, ran, synced = yield from _pipelined(psycopg.generators, pgconn)
            pgconn.exit_pipeline_mode()
        except BaseException:
            pgconn.finish()  # answers may be left unread
            raise
        if not (synced and synced[-1].status == _PIPELINE_SYNC):
            pgconn.finish()
            raise psycopg.InterfaceError(f"no pipeline sync after {stmt.sql[:40]!r}")
        if made and made[-1].error_field(_SQLSTATE) == _ALREADY_PREPARED:
            prepared.add(stmt.name)
            pgconn.send_query_prepared(stmt.name, values)
            return _check((yield from execute(pgconn)), stmt, _TUPLES_OK)
        _check(made, stmt, _COMMAND_OK)
        prepared.add(stmt.name)
        return _check(ran, stmt, _TUPLES_OK)

    def _prepare(self, conn: Any, stmt: _Statement, prepared: set[bytes]) -> None:
        """Prepare ``stmt`` on ``conn`` (one round trip), or raise why not. One the session
        already holds under its name (the name is its text's hash) counts as prepared."""
        psycopg = self._psycopg
        conn.pgconn.send_prepare(stmt.name, stmt.query)
        results = conn.wait(psycopg.generators.execute(conn.pgconn))
        if not (results and results[-1].error_field(_SQLSTATE) == _ALREADY_PREPARED):
            _check(results, stmt, _COMMAND_OK)
        prepared.add(stmt.name)

    def _roll_back(self, conn: Any) -> None:
        """After a failed pipelined transaction: roll back what it left open on ``conn``, if
        anything (a failure there is the connection's, found by its next user)."""
        if not self._idle(conn):
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")

    def _idle(self, conn: Any) -> bool:
        """Whether ``conn`` is outside any transaction: only then may a statement relax its own
        commit. Inside a caller's transaction (a store call made from a ``write``), a
        transaction-local setting would relax the caller's commit too. (Read from ``pgconn``:
        ``conn.info`` builds an object and an enum on every look, twice per run.)"""
        return bool(conn.pgconn.transaction_status == self._psycopg.pq.TransactionStatus.IDLE)

    # ----------------------------------------------------------------- one round trip each
    def fence(self, cur: Any, run_id: str, owner: str) -> None:
        """``wflo_fence`` locks the run's row and raises unless ``owner`` holds its lease; no
        answer to wait for, so a :meth:`write_batch` stays one round trip."""
        self._local.fenced = (run_id, owner)
        try:
            cur.execute("SELECT wflo_fence(%s, %s)", (run_id, owner))
        except self._psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) == _LEASE_LOST:
                raise LeaseLost(run_id=run_id, owner=owner) from None
            raise

    def write_batch(self, fn: Callable[[Any], T], *, relaxed: bool = False) -> T:
        psycopg = self._psycopg

        def go() -> T:
            self._local.fenced = None
            with self._writing(), self._connection() as conn:
                cur = conn.cursor()
                try:
                    with conn.pipeline():
                        relax = relaxed and self._idle(conn)
                        cur.execute("BEGIN")
                        if relax:  # pipelined: no round trip more
                            cur.execute("SET LOCAL synchronous_commit TO off")
                        result = fn(cur)
                        cur.execute("COMMIT")
                    return result
                except BaseException as exc:
                    self._roll_back(conn)
                    fenced = getattr(self._local, "fenced", None)
                    if isinstance(exc, psycopg.Error) and exc.sqlstate == _LEASE_LOST and fenced:
                        raise LeaseLost(run_id=fenced[0], owner=fenced[1]) from None
                    raise
                finally:
                    cur.close()

        return self._retrying(go)

    def write_rows(
        self,
        sql: str,
        rows: Sequence[Sequence[Any]],
        *,
        fence: tuple[str, str] | None = None,
        relaxed: bool = False,
    ) -> None:
        # Straight to libpq (issue 20; see ``_direct_rows``): the lease check, the relaxed
        # commit's setting and one statement per row, pipelined as one implicit transaction
        # that commits at its sync: one round trip, as ``write_batch``'s pipeline, without its
        # cursor, BEGIN and COMMIT. Inside a caller's transaction, with nothing to write, or
        # with a libpq that has no pipeline mode: ``write_batch``, as before.
        psycopg = self._psycopg
        if not rows or getattr(self._local, "held", None) is not None or not psycopg.Pipeline.is_supported():
            return super().write_rows(sql, rows, fence=fence, relaxed=relaxed)
        stmt = _ROW_STATEMENTS.get(sql)
        if stmt is None:
            stmt = _Statement(self._sql(sql))
            if len(_ROW_STATEMENTS) < 64:  # a few texts (the checkpointer's two): kept
                _ROW_STATEMENTS[sql] = stmt
        batch: list[tuple[_Statement, Sequence[Any]]] = []
        if fence is not None:
            batch.append((_FENCE_ALONE[relaxed], fence))
        elif relaxed:
            batch.append((_RELAX_ALONE, ()))
        batch.extend((stmt, row) for row in rows)

        def go() -> None:
            with self._connection() as conn:
                if not self._alone(conn):
                    super(PostgresStore, self).write_rows(sql, rows, fence=fence, relaxed=relaxed)
                    return
                try:
                    self._direct_rows(conn, batch)
                except psycopg.Error as exc:
                    if fence is not None and getattr(exc, "sqlstate", None) == _LEASE_LOST:
                        raise LeaseLost(run_id=fence[0], owner=fence[1]) from None
                    raise

        self._retrying(go)

    def _direct_rows(self, conn: Any, batch: Sequence[tuple[_Statement, Sequence[Any]]]) -> None:
        """Run ``batch`` (statements, each with its parameters) on an idle ``conn`` (see
        ``_alone``) in one pipeline ended by one sync: one implicit transaction, one round
        trip. A statement that fails rolls back the ones before it and skips the rest.

        As ``_direct``: each statement is prepared once per connection under its text's hash,
        in the same pipeline at its first use (behind a transaction pooler: sent unprepared);
        a pipeline refused because the session lost a statement (``DEALLOCATE ALL``) or holds
        one already ran nothing and is sent again; errors are psycopg's; text holding NUL is
        refused before anything is sent. Bytes go as binary parameters (no hex text to build
        and parse). A connection left with answers unread is closed (the pool drops it)."""
        psycopg = self._psycopg
        sent = [(stmt, *_params(params)) for stmt, params in batch]
        pgconn = conn.pgconn
        with conn.lock:
            if pgconn.status != _CONNECTION_OK:
                raise psycopg.OperationalError("the connection is closed")
            unprepared = self.pooler == "transaction"
            prepared = _PREPARED.get(conn)
            if prepared is None:
                prepared = _PREPARED[conn] = set()
            for _ in range(3):  # at most the two statements to re-prepare, then for real
                made: list[_Statement] = []
                pgconn.enter_pipeline_mode()
                try:
                    for stmt, values, formats in sent:
                        if unprepared:
                            pgconn.send_query_params(stmt.query, values, param_formats=formats)
                            continue
                        if stmt.name not in prepared and stmt not in made:
                            pgconn.send_prepare(stmt.name, stmt.query)
                            made.append(stmt)
                        pgconn.send_query_prepared(stmt.name, values, param_formats=formats)
                    pgconn.pipeline_sync()
                    answers = conn.wait(_answers(psycopg.generators, pgconn, len(made) + len(sent) + 1))
                    pgconn.exit_pipeline_mode()
                except BaseException:
                    pgconn.finish()  # answers may be left unread: not usable again
                    raise
                if not (answers[-1] and answers[-1][-1].status == _PIPELINE_SYNC):
                    pgconn.finish()
                    raise psycopg.InterfaceError(f"no pipeline sync after {sent[-1][0].sql[:40]!r}")
                if _sent_again(answers, made, sent, prepared):
                    continue
                _rows_checked(answers, made, sent)
                return
            raise psycopg.InterfaceError(f"could not prepare {sent[-1][0].sql[:40]!r}")

    def _create_run_once(
        self, values: tuple[Any, ...], rows: list[tuple[Any, ...]], lease_seconds: float | None
    ) -> tuple[tuple[Any, ...] | None, bool]:
        cols = list(zip(*rows, strict=True))
        params = (*values[:8], lease_seconds is not None, lease_seconds or 0.0, *values[8:],
                  *[_array(c) for c in cols[1:]], lease_seconds is None, values[0])  # fmt: skip
        # A run its caller executes now (it has an owner) starts relaxed; an enqueued one is
        # durable before its handle is returned. See Commit modes.
        with self._connection() as conn:
            relax = lease_seconds is not None and self._idle(conn)
            if self._alone(conn):  # straight to libpq: see ``_direct``
                row = _row(self._direct(conn, _CREATE_ALONE[relax], params))
            else:
                row = conn.execute(_CREATE_RUN_RELAXED if relax else _CREATE_RUN, params).fetchone()
        if row is None:
            return None, False
        return tuple(row[:-2]), bool(row[-2])

    def _append_once(
        self,
        run_id: str,
        head: Head,
        new: Head,
        rows: list[tuple[Any, ...]],
        *,
        owner: str | None,
        now: str,
        status: str | None,
        finish: bool,
        output_json: str | None,
        error_json: str | None,
        release: bool,
        wake_at: str | None,
        notify: bool,
        ops: Sequence[StoreOp],
        relaxed: bool = False,
    ) -> bool:
        """The fenced append as one ``wflo_append`` statement; with ops, that statement, the
        ops' statements and the commit are pipelined: one round trip unless an op waits for
        an answer before the commit. ``relaxed`` (never with ops): see Commit modes."""
        cols = list(zip(*rows, strict=True)) if rows else [()] * 7
        params = (run_id, head.seq, owner, new.seq, new.hash, now, status, finish, output_json, error_json,
                  release, wake_at, "wflo_runs" if notify else None, *[_array(c) for c in cols[1:]])  # fmt: skip
        psycopg = self._psycopg
        after: list[Callable[[], None]] = []
        with self._connection() as conn:
            if not ops and self._alone(conn):  # its own transaction: straight to libpq
                try:
                    value = _value(self._direct(conn, _APPEND_ALONE[relaxed], params))
                except psycopg.Error as exc:
                    if getattr(exc, "sqlstate", None) == _LEASE_LOST:
                        raise LeaseLost(run_id=run_id, owner=owner) from None
                    raise
                return value is not None and int(value) != 0
            cur = conn.cursor()
            try:
                if not ops:
                    relax = relaxed and self._idle(conn)
                    cur.execute(_APPEND_RELAXED if relax else _APPEND, params)  # its own transaction
                else:
                    op_cur = conn.cursor()
                    try:
                        with conn.pipeline() as pipeline:
                            op_cur.execute("BEGIN")
                            cur.execute(_APPEND, params)
                            after = run_ops(ops, _PipelinedCursor(op_cur, pipeline))
                            op_cur.execute("COMMIT")
                    except BaseException:
                        self._roll_back(conn)
                        raise
                    finally:
                        op_cur.close()
                row = cur.fetchone()
            except psycopg.Error as exc:
                if getattr(exc, "sqlstate", None) == _LEASE_LOST:
                    raise LeaseLost(run_id=run_id, owner=owner) from None
                raise
            finally:
                cur.close()
            for then in after:  # committed; read the ops' answers while the connection is ours
                then()
        return bool(row[0])

    def _is_disconnect(self, error: BaseException) -> bool:
        psycopg = self._psycopg
        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)

    def _rollback_quietly(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")

    def _open_stream(self, conn: Any, sql: str, params: tuple[Any, ...], *, own: bool) -> Any:
        # A server-side cursor: the server keeps the result and sends one batch per FETCH.
        # DECLARE needs a transaction block; its snapshot lasts as long as the cursor.
        if own:
            conn.execute("BEGIN READ ONLY")
        cur = conn.cursor(name=cursor_name())
        try:
            cur.execute(sql, params)
        except BaseException:
            with contextlib.suppress(Exception):
                cur.close()
            raise
        return cur

    def _display_url(self) -> str:
        return _redact(self.url)

    def _end_stream(self, conn: Any, cur: Any) -> None:
        if cur is not None:
            with contextlib.suppress(Exception):
                cur.close()  # CLOSE on the server, unless the transaction already failed
        if not conn.closed and not self._idle(conn):
            self._rollback_quietly(conn)

    def _lock_for_migration(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7412001)")

    def _lock_chain_head(self, cur: Any, chain: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7412002, hashtext(%s))", (chain,))

    def _lock_queue(self, cur: Any, queue: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7412003, hashtext(%s))", (queue,))

    def _notify(self, cur: Any, channel: str, payload: str) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def _open_watch(self) -> Any:
        if self.pooler == "transaction" and not self.listen_url:
            return _Poll()  # LISTEN through a transaction pooler hears nothing: poll instead
        if self.listen_url:
            try:
                kwargs = self._kwargs()
                if "application_name" in self.listen_url:
                    kwargs.pop("application_name", None)
                conn = self._psycopg.connect(self.listen_url, **kwargs)
            except self._psycopg.Error as exc:
                raise StoreUnavailableError(url=_redact(self.listen_url), detail=_first_line(exc)) from None
        else:
            conn = self._connect()
        conn.execute("LISTEN wflo_runs")
        return conn

    def _watch(self, watch: Any, timeout: float) -> list[str | None]:
        if isinstance(watch, _Poll):  # no channel: every waiter looks again each poll interval
            left = watch.due - time.monotonic()
            if left > timeout:
                time.sleep(timeout)
                return []
            time.sleep(max(0.0, left))
            watch.due = time.monotonic() + self.poll_interval
            return [None]
        return [n.payload for n in watch.notifies(timeout=timeout, stop_after=1)]

    def _close_watch(self, watch: Any) -> None:
        if watch is not None and not isinstance(watch, _Poll):
            watch.close()


class _Statement:
    """A statement ``_direct`` sends: its text with ``$n`` placeholders and the name it is
    prepared under on each connection (from its text: one text, one name)."""

    __slots__ = ("name", "query", "sql")

    def __init__(self, sql: str) -> None:
        parts = sql.split("%s")
        text = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        self.sql = sql
        self.query = text.encode()
        self.name = b"wflo_" + hashlib.sha256(self.query).hexdigest()[:20].encode()


# The hot append alone (no ops): durable, and relaxed (see Commit modes), by ``relaxed``.
_APPEND_ALONE = (_Statement(_APPEND), _Statement(_APPEND_RELAXED))
# A new run with its first events: durable (enqueued), and relaxed (executed now), by ``relaxed``.
_CREATE_ALONE = (_Statement(_CREATE_RUN), _Statement(_CREATE_RUN_RELAXED))

# The statements ``_direct`` prepared on each connection (gone with the connection).
_PREPARED: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()

_SQLSTATE = ord("C")  # PG_DIAG_SQLSTATE
# libpq's codes (``psycopg.pq``'s enums compare equal to them; the ints cost no attribute look-ups).
_CONNECTION_OK = 0  # pq.ConnStatus.OK
_IDLE = 0  # pq.TransactionStatus.IDLE
_PIPELINE_OFF = 0  # pq.PipelineStatus.OFF
_COMMAND_OK = 1  # pq.ExecStatus.COMMAND_OK
_TUPLES_OK = 2  # pq.ExecStatus.TUPLES_OK
_PIPELINE_SYNC = 10  # pq.ExecStatus.PIPELINE_SYNC


def _text(value: Any) -> bytes | None:
    """A parameter as PostgreSQL text (UTF-8), for a statement that casts each one. libpq
    reads a text parameter up to its first NUL byte: text holding one is refused here, with
    psycopg's own error, instead of reaching the server cut short."""
    if value is None:
        return None
    if isinstance(value, str):
        if "\x00" in value:
            from psycopg import DataError

            raise DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return value.encode()
    if value is True or value is False:
        return b"t" if value else b"f"
    if isinstance(value, int):
        return str(int(value)).encode()
    if isinstance(value, float):
        return repr(float(value)).encode()
    raise TypeError(f"cannot send {type(value).__name__} as a statement's parameter")


def _pipelined(generators: Any, pgconn: Any) -> Any:
    """Flush a pipeline of two statements and its sync; read the three answers."""
    yield from generators.send(pgconn)
    answers = []
    for _ in range(3):
        answers.append((yield from generators.fetch_many(pgconn)))
    return answers


def _check(results: list[Any], stmt: _Statement, ok: Any) -> Any:
    """The last of ``results``, or the error it reports (as psycopg raises it)."""
    from psycopg import errors, pq

    if not results:
        raise errors.InterfaceError(f"no result from {stmt.sql[:40]!r}")
    result = results[-1]
    if result.status == ok:
        return result
    if result.status == pq.ExecStatus.FATAL_ERROR:
        raise errors.error_from_result(result, encoding="utf-8")
    raise errors.InterfaceError(f"unexpected result {pq.ExecStatus(result.status).name} from {stmt.sql[:40]!r}")


def _value(result: Any) -> bytes | None:
    """The first column of the first row of a statement's answer, as text."""
    value: bytes | None = result.get_value(0, 0)
    return value


# Readers of the column types ``_direct``'s statements answer with, by type oid.
_READERS: dict[int, Callable[[bytes], Any]] = {
    25: bytes.decode,  # text
    1043: bytes.decode,  # varchar
    19: bytes.decode,  # name
    20: int,  # bigint
    23: int,  # integer
    21: int,  # smallint
    16: lambda v: v == b"t",  # boolean
}


def _row(result: Any) -> tuple[Any, ...] | None:
    """The first row of a statement's answer as psycopg would load it, or ``None``."""
    if result.ntuples == 0:
        return None
    values = []
    for i in range(result.nfields):
        value = result.get_value(0, i)
        if value is not None:
            reader = _READERS.get(result.ftype(i))
            if reader is None:
                from psycopg import errors

                raise errors.ProgrammingError(f"no reader for the type of column {i} (oid {result.ftype(i)})")
            value = reader(value)
        values.append(value)
    return tuple(values)


# ``write_rows``'s statements before its rows: the lease check (``wflo_fence``) and, for a
# relaxed write, the commit's setting (see Commit modes), in one statement.
_FENCE_ALONE = (_Statement("SELECT wflo_fence(%s, %s)"), _Statement(f"SELECT wflo_fence(%s, %s), {_RELAX}"))
_RELAX_ALONE = _Statement(f"SELECT {_RELAX}")
# ``write_rows``'s statements by their text as given (``?`` placeholders).
_ROW_STATEMENTS: dict[str, _Statement] = {}

_FATAL_ERROR = 7  # pq.ExecStatus.FATAL_ERROR


def _params(params: Sequence[Any]) -> tuple[list[bytes | None], list[int] | None]:
    """A statement's parameters for libpq, with their formats: text as ``_direct`` sends it,
    bytes in binary (``None``: all text)."""
    values: list[bytes | None] = []
    formats: list[int] | None = None
    for i, v in enumerate(params):
        if type(v) is str and "\x00" not in v:
            values.append(v.encode())
        elif isinstance(v, bytes | bytearray | memoryview):
            if formats is None:
                formats = [0] * len(params)
            formats[i] = 1
            values.append(bytes(v))
        else:
            values.append(_text(v))
    return values, formats


def _answers(generators: Any, pgconn: Any, count: int) -> Any:
    """Flush a pipeline and read ``count`` answers (the last one its sync's)."""
    yield from generators.send(pgconn)
    answers = []
    for _ in range(count):
        answers.append((yield from generators.fetch_many(pgconn)))
    return answers


def _sent_again(
    answers: list[Any], made: list[_Statement], sent: list[tuple[_Statement, Any, Any]], prepared: set[bytes]
) -> bool:
    """Whether ``_direct_rows``'s pipeline failed only for the session's prepared statements
    (nothing ran): ``prepared`` is then put right and the pipeline is to be sent again."""
    names = {s.name for s in made}
    i = 0
    for stmt, _, _ in sent:
        if stmt.name in names:  # its preparation's answer comes first
            names.discard(stmt.name)
            results = answers[i]
            i += 1
            if results and results[-1].status == _COMMAND_OK:
                prepared.add(stmt.name)  # kept by the session, whatever follows
            elif results and results[-1].error_field(_SQLSTATE) == _ALREADY_PREPARED:
                prepared.add(stmt.name)
                return True
        results = answers[i]
        i += 1
        if results and results[-1].status == _FATAL_ERROR:
            if results[-1].error_field(_SQLSTATE) == _NO_SUCH_STATEMENT:
                prepared.discard(stmt.name)
                return True
            return False
    return False


def _rows_checked(answers: list[Any], made: list[_Statement], sent: list[tuple[_Statement, Any, Any]]) -> None:
    """Raise the first error of ``_direct_rows``'s pipeline, as psycopg raises it."""
    names = {s.name for s in made}
    i = 0
    for stmt, _, _ in sent:
        if stmt.name in names:
            names.discard(stmt.name)
            _check(answers[i], stmt, _COMMAND_OK)
            i += 1
        results = answers[i]
        i += 1
        _check(results, stmt, results[-1].status if results and results[-1].status in _DONE else _COMMAND_OK)


_DONE = (_COMMAND_OK, _TUPLES_OK)


class _Exchange:
    """One libpq exchange on a connection (a psycopg generator, ``_direct_gen``), begun at once
    (the statement sent) and driven to its end either from the event loop (:meth:`run`:
    awaited on the loop's reader or writer, never a blocking read) or, when code on the loop's
    own thread cannot wait for the loop (a sync step's append behind it), by a blocking wait
    on the socket (:meth:`finish`). Whichever ends it keeps the outcome; the other takes it."""

    def __init__(self, gen: Any, pgconn: Any) -> None:
        self._gen = gen
        self._pgconn = pgconn
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._state = 0
        self._step(None)

    def _step(self, ready: int | None) -> None:
        """Advance the generator: begin it (``ready`` None), or tell it what is ready."""
        try:
            self._state = next(self._gen) if ready is None else self._gen.send(ready)
        except StopIteration as stop:
            self._end(stop.value, None)
        except OSError as exc:
            self._end(None, _socket_closed(exc))
        except Exception as exc:
            self._end(None, exc)

    def _end(self, value: Any, error: BaseException | None) -> None:
        self.done, self.value, self.error = True, value, error
        self._gen = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # the awaiting task, if any, wakes to the outcome

    async def run(self) -> None:
        """Drive the exchange to its end from the event loop (as ``psycopg.waiting.wait_async``,
        without its timer). Run to its end even if the awaiting task is cancelled meanwhile (a
        statement sent must have its answer read, and a commit made must be known, as
        ``Store.off_loop`` runs an operation to its end): the cancellation is then raised at the
        task's next await."""
        from psycopg.waiting import READY_R, READY_W, WAIT_R, WAIT_W

        if self.done:
            return
        loop = asyncio.get_running_loop()
        fileno = self._pgconn.socket
        ready = 0
        cancelled = False

        def wake(got: int) -> None:
            nonlocal ready
            ready |= got
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        try:
            while not self.done:
                ready = 0
                state = self._state
                reading, writing = state & WAIT_R, state & WAIT_W
                if reading:
                    loop.add_reader(fileno, wake, READY_R)
                if writing:
                    loop.add_writer(fileno, wake, READY_W)
                try:
                    while not ready and not self.done:
                        self._waiter = loop.create_future()
                        try:
                            await self._waiter
                        except asyncio.CancelledError:
                            cancelled = True  # not cut off half-way: raised once the answer is read
                        finally:
                            self._waiter = None
                finally:
                    if reading:
                        loop.remove_reader(fileno)
                    if writing:
                        loop.remove_writer(fileno)
                if not self.done:  # else ended by ``finish`` meanwhile
                    self._step(ready)
        finally:
            if cancelled:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                    task.cancel()

    def finish(self) -> None:
        """Drive the exchange to its end now, blocking on its socket (``psycopg.waiting.wait``),
        from the loop's thread; the task awaiting :meth:`run` wakes to the outcome. An interrupt
        meanwhile leaves answers unread: the connection is closed (the outcome: a lost
        connection) and the interrupt raised."""
        if self.done:
            return
        from psycopg import OperationalError
        from psycopg.waiting import wait

        gen = self._gen
        try:
            value = wait(_resumed(gen, self._state), self._pgconn.socket, interval=_WAIT_INTERVAL)
        except OSError as exc:
            self._end(None, _socket_closed(exc))
        except Exception as exc:
            self._end(None, exc)
        except BaseException:
            self._pgconn.finish()
            self._end(None, OperationalError("the connection was closed: interrupted while reading"))
            raise
        else:
            self._end(value, None)


_WAIT_INTERVAL = 0.1  # s: how often a blocking wait on a socket looks for an interrupt (as psycopg)


def _socket_closed(exc: OSError) -> Exception:
    """The error psycopg gives for a socket lost mid-exchange (``OperationalError``), caused by ``exc``."""
    from psycopg import OperationalError

    error = OperationalError("connection socket closed")
    error.__cause__ = exc
    return error


def _resumed(gen: Any, state: Any) -> Any:
    """A psycopg generator already begun (waiting for ``state``), as a new one to drive."""
    while True:
        ready = yield state
        try:
            state = gen.send(ready)
        except StopIteration as stop:
            return stop.value


class _LoopWriter:
    """A run's append from its event loop on one pooled connection (``loop_writer``)."""

    def __init__(self, store: PostgresStore, conn: Any, executor: Any, key: Any, token: Any) -> None:
        self._store = store
        self._conn = conn
        self._executor = executor
        self._key = key
        self._token = token

    def append(self, run_id: str, head: Head, events: Sequence[NewEvent], *, owner: str | None) -> _LoopAppend:
        """``Store.append(run_id, head, events, owner=owner)``: one ``wflo_append``, prepared,
        committed as ``append`` commits it (durable; relaxed only for a marker alone), sent now;
        await the result for the new head (or ``LeaseLost``, psycopg's errors), or call its
        ``finish()`` to wait for it on this thread. A lost connection is dropped and the append
        made again on a store thread, where ``append`` finds out whether the first one committed.
        One append per writer: its connection goes back to the pool with the answer."""
        store = self._store
        psycopg = store._psycopg
        now = now_iso()
        relaxed = bool(events) and all(e.type in RELAXED_MARKERS for e in events)
        new, rows = store._link(run_id, head, events)
        cols = list(zip(*rows, strict=True)) if rows else [()] * 7
        params = (run_id, head.seq, owner, new.seq, new.hash, now, None, False, None, None, False, None, None,
                  *[_array(c) for c in cols[1:]])  # fmt: skip
        conn = self._conn
        if conn is None or not conn.lock.acquire(blocking=False):  # never: the connection is ours alone
            raise psycopg.InterfaceError("the connection is in use")
        self._conn = None  # given back by the append once answered
        try:
            exchange = _Exchange(store._direct_gen(conn, _APPEND_ALONE[relaxed], params), conn.pgconn)
        except BaseException:
            conn.lock.release()
            store._pool.put(conn, broken=store._conn_broken(conn))
            raise
        return _LoopAppend(store, conn, exchange, functools.partial(store.append, run_id, head, events, owner=owner),
                           run_id, owner, new)  # fmt: skip

    def close(self) -> None:
        """Give the connection back to the pool (dropped if broken) and the place in the order."""
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                self._store._pool.put(conn, broken=self._store._conn_broken(conn))
        finally:
            self._executor.give_back(self._key, self._token)


class _LoopAppend:
    """An append sent from the event loop (``_LoopWriter.append``), its answer not read yet.

    ``await`` it on the loop (the loop never blocked), or :meth:`finish` it on the loop's thread
    where code cannot give way to the loop (a sync call's append behind it, see
    ``RunContext.append``): the same outcome either way, computed once."""

    def __init__(self, store: PostgresStore, conn: Any, exchange: _Exchange, redo: Callable[[], Head],
                 run_id: str, owner: str | None, new: Head) -> None:  # fmt: skip
        self._store = store
        self._conn: Any = conn  # None once back in the pool
        self._exchange = exchange
        self._redo = redo
        self._redone: tuple[Head | None, BaseException | None] | None = None
        self._redo_lock = threading.Lock()
        self._run_id = run_id
        self._owner = owner
        self._new = new
        self._redo_needed = False

    def __await__(self) -> Any:
        return self.wait().__await__()

    async def wait(self) -> Head:
        """The new head, the answer awaited on the loop."""
        await self._exchange.run()
        if self._lost():
            return await self._store.off_loop(self._again)
        return self._head()

    def finish(self) -> Head:
        """The new head, the answer waited for on this thread (blocking, as a sync append)."""
        self._exchange.finish()
        if self._lost():
            return self._again()
        return self._head()

    def _lost(self) -> bool:
        """Give the connection back (the exchange ended); whether it was lost on the way."""
        conn, self._conn = self._conn, None
        store, error = self._store, self._exchange.error
        if conn is not None:
            conn.lock.release()
            broken = store._conn_broken(conn)
            lost = isinstance(error, store._psycopg.Error) and (store._is_disconnect(error) or broken)
            self._redo_needed = lost and getattr(error, "sqlstate", None) != _LEASE_LOST
            store._pool.put(conn, broken=broken or self._redo_needed)
        return self._redo_needed

    def _head(self) -> Head:
        error = self._exchange.error
        if error is not None:
            if getattr(error, "sqlstate", None) == _LEASE_LOST:
                raise LeaseLost(run_id=self._run_id, owner=self._owner) from None
            raise error
        value = _value(self._exchange.value)
        return Head(self._new.seq, self._new.hash, value is not None and int(value) != 0)

    def _again(self) -> Head:
        """The append made again through ``Store.append`` (once, whoever asks first)."""
        with self._redo_lock:
            if self._redone is None:
                try:
                    self._redone = (self._redo(), None)
                except BaseException as exc:
                    self._redone = (None, exc)
        head, error = self._redone
        if error is not None:
            raise error
        assert head is not None
        return head


class _Poll:
    """The change feed's "watch" when there is no LISTEN channel: when the next look is due."""

    def __init__(self) -> None:
        self.due = time.monotonic()


class _PipelinedCursor:
    """A cursor handed to ops inside a pipeline: reading ``rowcount`` or ``description``
    first collects the answers sent so far (a round trip), so an op that decides on them
    sees the real values; ``fetch*`` do so by themselves. Ops that read nothing before the
    commit cost no extra round trip."""

    def __init__(self, cur: Any, pipeline: Any) -> None:
        self._cur = cur
        self._pipeline = pipeline

    @property
    def rowcount(self) -> int:
        self._pipeline.sync()
        return int(self._cur.rowcount)

    @property
    def description(self) -> Any:
        self._pipeline.sync()
        return self._cur.description

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


_IDLE_GET_TIMEOUT = 0.002  # s: the longest ``get_idle`` can wait, when another thread won the race


class _PsycopgPool:
    """``psycopg_pool.ConnectionPool`` behind the store's small pool interface."""

    def __init__(self, store: PostgresStore) -> None:
        try:
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError:
            raise ConfigurationError("the PostgreSQL store needs psycopg_pool: pip install 'wflo[postgres]'") from None
        self._timeout_error = PoolTimeout
        self._store = store
        # One direct connection first: an unreachable server or a wrong password is then a
        # one-line error at once, not a pool timeout after many silent retries.
        store._connect().close()
        self._pool = ConnectionPool(
            store.url,
            kwargs=store._kwargs(),
            min_size=1,
            max_size=store.pool_size,
            timeout=store.pool_timeout,
            max_idle=60.0,
            num_workers=2,
            name="wflo",
            configure=store._warm,
            open=False,
        )
        self._pool.open(wait=False)

    def get(self) -> Any:
        try:
            return self._pool.getconn()
        except self._timeout_error:
            try:
                self._store._connect().close()
            except StoreUnavailableError:
                raise
            raise StoreUnavailableError(
                url=_redact(self._store.url),
                detail=f"all {self._store.pool_size} pooled connections stayed busy for "
                f"{self._store.pool_timeout:g} s (raise pool_size in the URL, or find the long transaction)",
            ) from None

    def get_idle(self) -> Any:
        """A connection only if one is idle in the pool now (never waits for one), else ``None``."""
        idle = getattr(self._pool, "_pool", None)  # psycopg_pool's idle connections
        if not idle:
            return None
        try:
            # Another thread may take it meanwhile: a bounded wait, then none.
            return self._pool.getconn(timeout=_IDLE_GET_TIMEOUT)
        except self._timeout_error:
            return None

    def put(self, conn: Any, *, broken: bool = False) -> None:
        if broken:
            with contextlib.suppress(Exception):
                conn.close()  # the pool then replaces it instead of handing it out again
        self._pool.putconn(conn)

    def discard_idle(self) -> None:
        self._pool.check()

    def close(self) -> None:
        self._pool.close(timeout=5.0)


def _array(values: Sequence[Any]) -> str:
    """``values`` as a PostgreSQL array literal, for a parameter the statement casts
    (``%s::text[]``, ``%s::bigint[]``). Sent as text, the server parses it: psycopg would
    otherwise inspect every element of every list to choose the array's type, a large part of
    the client's work for a short run (issue 20). Every element is quoted, so no text can
    read as NULL, a delimiter or a nested array; ``None`` is NULL."""
    if values and None not in values:
        # Most columns (numbers, times, hashes, types) hold no quote or backslash: quoted
        # all at once, escaping nothing.
        body = '","'.join([v if type(v) is str else str(v) for v in values])
        if '"' not in body and "\\" not in body:
            return '{"' + body + '"}'
    return "{" + ",".join(["NULL" if v is None else _quoted(str(v)) for v in values]) + "}"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url
