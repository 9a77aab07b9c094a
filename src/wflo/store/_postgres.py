"""PostgreSQL backend: the scale-out store (many workers on many machines).

The store's hot statements go straight through libpq (``_pgdirect``); its connections come
from ``psycopg_pool`` (``_pool.PsycopgPool``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from .._errors import ConfigurationError, LeaseLost, StoreUnavailableError
from ._base import Store, StoreOp, run_ops
from ._conn import process_id
from ._migrations import M025_PGSTEP_LEAN_STEP, MIGRATIONS
from ._pgdirect import (
    LEASE_COLUMN,
    LEASE_LOST,
    PREPARED,
    LoopWriter,
    Statement,
    Values,
    alone,
    array_text,
    direct,
    direct_gen,
    direct_rows,
    first_row,
    first_value,
    new_run_lease,
    prepare,
)
from ._pool import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, PsycopgPool
from ._records import RUN_COLUMNS, Head, RunRecord, iso
from ._stream import cursor_name

# The store's UTC text time form, computed by the server (its clock judges leases).
_PG_TIME = (
    """to_char(clock_timestamp() AT TIME ZONE 'UTC' + make_interval(secs => %s), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
)

# Commit modes. Most commits wait for the WAL flush (``synchronous_commit`` as the server
# has it, ``on`` by default): a few milliseconds each, most of what a short run costs. Two
# commits here skip that wait (``set_config('synchronous_commit', 'off', true)``, inside the
# same statement or transaction: no extra round trip):
#
# - the start of a run its caller executes at once (``create_run`` with an owner: ``.run()``,
#   a child's ``.run()``, ``wflo.init()``);
# - the marker that an execution began (``run.started``/``run.resumed`` appended alone,
#   ``RELAXED_MARKERS`` in ``_base``).
#
# Why that is safe. PostgreSQL's WAL is one sequence: a synchronous commit flushes it up to
# its own commit record, so every commit before it (asynchronous ones included) is durable
# when it returns. Nothing outside the run depends on these two before the run's next
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
# - a lost marker: the run's head and projection roll back with it (one transaction), the
#   next append is fenced on that head and raises ``LeaseLost``; the run is resumed after its
#   lease lapses (the claim before the marker was synchronous: the lease held, so nobody else
#   started the run's next step meanwhile). No other chain refers to it, and anything that read it and then committed
#   (an audit checkpoint records itself on the system chain before its file is written)
#   flushed it first. What only reads (a run listing, ``wflo audit export``, which writes its
#   files before its own record commits) can see such an event in that window and the store
#   then lose it: an export taken while the run executes, in the last ~600 ms before a crash.
#
# A claim (``claim_next``, ``claim``) is synchronous, like a heartbeat. It was relaxed once, and
# that was wrong: a fence stops writes, not the start of a step. A claimer whose claim was lost
# with the server still counts on its lease (``RunContext.ensure_lease`` trusts a fresh one
# without a round trip), while in the store the run is queued or waiting again; once the
# server is back, another worker claims it, and both start the same step at once (the
# PostgreSQL chaos test saw it in CI, and ``test_pg_commit_modes`` makes it happen on purpose).
# A start and a marker have no such window: nobody else can claim a run that does not exist,
# and a lost marker leaves the (synchronous) claim's lease in place.
#
# Only a statement or transaction of its own is relaxed: inside a caller's transaction (a store
# call from a ``write``) it commits as that transaction does (``_idle``).
#
# What stays synchronous: enqueueing (``.start()`` returns a handle that a worker must be able
# to find: ``create_run`` without an owner), every other append, every ``write``/``write_batch``
# (steps' side tables, reservations, approvals, decisions, wake-ups), heartbeats and releases.

# A new run and its first events in one statement: nothing is inserted if the id exists, in
# which case the existing row is returned (created = false). A new run's row is not sent back:
# the caller wrote it, all but its lease's expiry (the server's clock), which comes back in
# that column among NULLs (``_written``): 20 columns of text less to form, send and parse
# (issue 20). The relaxed form: see Commit modes.
_NEW_RUN_ANSWER = ", ".join(
    "r.lease_expires_at" if c == "lease_expires_at" else "NULL" for c in RUN_COLUMNS.split(", ")
)
# A new run's row (both creates' first CTE): nothing for an id that exists; its lease's expiry
# from the server's clock.
_INSERT_RUN = f"""    INSERT INTO runs ({RUN_COLUMNS}, queue, priority, partition_key, started_at)
    VALUES (%s, %s, %s, %s, NULL, NULL, %s, %s, %s, %s,
            CASE WHEN %s THEN {_PG_TIME} END, 0, NULL, %s, %s, %s, %s, %s, NULL, %s, %s, %s, %s)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, lease_expires_at
"""
_CREATE_RUN_TEMPLATE = f"""
WITH r AS (
{_INSERT_RUN}), e AS (
    INSERT INTO events (chain, seq, type, at, data, prev_hash, hash)
    SELECT r.id, u.seq, u.type, u.at, u.data, u.prev, u.hash
      FROM r, unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
           AS u(seq, type, at, data, prev, hash)
), n AS (
    SELECT pg_notify('wflo_runs', r.id) FROM r WHERE %s
){{relax_cte}}
SELECT {_NEW_RUN_ANSWER}, NULL, true, (SELECT count(*) FROM n) FROM r{{relax_from}}
UNION ALL
SELECT {RUN_COLUMNS}, queue, false, 0 FROM runs WHERE id = %s AND NOT EXISTS (SELECT 1 FROM r)
"""


def _written(values: tuple[Any, ...], lease_expires_at: str | None) -> tuple[Any, ...]:
    """The row ``_CREATE_RUN`` inserted (``RUN_COLUMNS`` and queue), from ``values`` (as
    ``Store.create_run`` gives them) and the lease's expiry the server computed."""
    (run_id, workflow, status, input_json, parent_id, tenant, options_json, owner, last_seq, last_hash,
     attempts, created_at, updated_at, queue, _priority, _partition_key, _started_at) = values  # fmt: skip
    return (run_id, workflow, status, input_json, None, None, parent_id, tenant, options_json, owner,
            lease_expires_at, 0, None, last_seq, last_hash, attempts, created_at, updated_at, None, queue)  # fmt: skip


_RELAX = "set_config('synchronous_commit', 'off', true)"
_CREATE_RUN = _CREATE_RUN_TEMPLATE.format(relax_cte="", relax_from="")
_CREATE_RUN_RELAXED = _CREATE_RUN_TEMPLATE.format(relax_cte=f", s AS (SELECT {_RELAX})", relax_from=", s")

# A run its caller executes now (an owner, a lease; issue 20, measured: "pgempty" in
# docs/benchmarks.md): always two first events (``run.created``, ``run.started``), never a
# notification (nobody claims a run that has an owner). So its statement has the two events as
# scalars (no six arrays to parse and unnest), no ``pg_notify`` branch, and no ``UNION`` branch
# for an id that exists: then it answers nothing and the caller reads the run (``create_run``'s
# ``row is None``, as when another process created it at that moment): a second round trip, on
# a retry only. The server's time for the create about 40 µs (~15 %) less. The same answer as
# ``_CREATE_RUN`` for a new run. Parameters: ``_create_params``'s.
_CREATE_OWNED_TEMPLATE = f"""
WITH r AS (
{_INSERT_RUN}), e AS (
    INSERT INTO events (chain, seq, type, at, data, prev_hash, hash)
    SELECT r.id, u.seq, u.type, u.at, u.data, u.prev, u.hash
      FROM r, (VALUES (%s::bigint, %s::text, %s::text, %s::text, %s::text, %s::text),
                      (%s::bigint, %s::text, %s::text, %s::text, %s::text, %s::text))
           AS u(seq, type, at, data, prev, hash)
){{relax_cte}}
SELECT {_NEW_RUN_ANSWER}, NULL, true, 0 FROM r{{relax_from}}
"""
_CREATE_OWNED = _CREATE_OWNED_TEMPLATE.format(relax_cte="", relax_from="")
_CREATE_OWNED_RELAXED = _CREATE_OWNED_TEMPLATE.format(relax_cte=f", s AS (SELECT {_RELAX})", relax_from=", s")

_APPEND = (
    "SELECT wflo_append(%s::text, %s::bigint, %s::text, %s::bigint, %s::text, %s::text, %s::text, %s::boolean, "
    "%s::text, %s::text, %s::boolean, %s::text, %s::text, %s::bigint[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::text[])"
)
_APPEND_RELAXED = f"{_APPEND}, {_RELAX}"

# A step's append (issue 20, measured; migration m025): one event, and of the run's projection
# only its head moves (no status, end, wait, release or notification). One plain statement, no
# ``wflo_append``: the fenced UPDATE of the head alone (``wflo_append``'s UPDATE names ``status``,
# so the executor readied the status trigger's WHEN for the row, and has a CASE for each column
# a run's end changes), the event's INSERT from the UPDATE's row (none when the fence fails: no run at
# that head under that owner) as scalars (no arrays to parse and unnest), and the lease's loss
# raised as ``wflo_append`` raises it (``wflo_lease_lost``: SQLSTATE WF001, the statement rolled
# back), called only then. The server's time for a step's append: about 60 % of ``wflo_append``'s.
# Parameters: the new head (seq, hash), the time, the fence (run, head's seq, owner), the event's
# row (``_link``'s: chain, seq, type, at, data, prev_hash, hash) and the run again.
_STEP = """
WITH h AS (
    UPDATE runs SET last_seq = %s::bigint, last_hash = %s::text, updated_at = %s::text
     WHERE id = %s::text AND last_seq = %s::bigint AND lease_owner IS NOT DISTINCT FROM %s::text
    RETURNING cancel_requested
), e AS (
    INSERT INTO events (chain, seq, type, at, data, prev_hash, hash)
    SELECT %s::text, %s::bigint, %s::text, %s::text, %s::text, %s::text, %s::text FROM h
)
SELECT coalesce((SELECT cancel_requested FROM h), wflo_lease_lost(%s::text))"""
_STEP_RELAXED = f"{_STEP}, {_RELAX}"

# A run's end (issue 20, measured: "pgempty" in docs/benchmarks.md; needs m025's function): one
# event, the run's status, output or error and end time, its lease let go, ``wflo_runs``
# notified. One plain statement, as a step's (``_STEP``), instead of ``wflo_append``: the fenced
# UPDATE sets those columns as they are, without ``wflo_append``'s CASE for each, notifies from
# its ``RETURNING`` (once, for the row it updated: nobody when the fence fails, and the
# notification is sent at the commit only), the event's INSERT from that row as scalars, and
# ``wflo_lease_lost`` raising WF001 when the fence failed (the statement rolled back). The status
# counters' trigger fires as for ``wflo_append``'s UPDATE. Never relaxed: the end's commit waits
# for the flush. Parameters: the new head (seq, hash), the time, status, output, error, the time
# again, the fence (run, head's seq, owner), the event's row and the run again.
_END = """
WITH h AS (
    UPDATE runs SET last_seq = %s::bigint, last_hash = %s::text, updated_at = %s::text, status = %s::text,
           output = %s::text, error = %s::text, finished_at = %s::text, wake_at = NULL, lease_owner = NULL,
           lease_expires_at = NULL
     WHERE id = %s::text AND last_seq = %s::bigint AND lease_owner IS NOT DISTINCT FROM %s::text
    RETURNING cancel_requested, pg_notify('wflo_runs', id)
), e AS (
    INSERT INTO events (chain, seq, type, at, data, prev_hash, hash)
    SELECT %s::text, %s::bigint, %s::text, %s::text, %s::text, %s::text, %s::text FROM h
)
SELECT coalesce((SELECT cancel_requested FROM h), wflo_lease_lost(%s::text))"""


def _create_params(
    values: tuple[Any, ...], rows: list[tuple[Any, ...]], lease_seconds: float | None
) -> tuple[Any, ...]:
    """A new run's parameters: the run's ``values``, its lease (``None``: enqueued, no owner)
    and its first events' ``rows`` (``_link``'s); for a run with an owner and its two events
    (``_owned``) ``_CREATE_OWNED``'s (the events as scalars), else ``_CREATE_RUN``'s (as arrays)."""
    if _owned(rows, lease_seconds):
        return (*values[:8], True, lease_seconds, *values[8:], *rows[0][1:], *rows[1][1:])
    cols = list(zip(*rows, strict=True))
    return (*values[:8], lease_seconds is not None, lease_seconds or 0.0, *values[8:],
            *[array_text(c) for c in cols[1:]], lease_seconds is None, values[0])  # fmt: skip


def _owned(rows: list[tuple[Any, ...]], lease_seconds: float | None) -> bool:
    """Whether a new run is created by ``_CREATE_OWNED``: it has an owner (a lease) and its two
    first events, as ``create_run`` and ``LoopWriter.create_run`` write them."""
    return lease_seconds is not None and len(rows) == 2


def _append_statement(
    run_id: str, head: Head, new: Head, rows: list[tuple[Any, ...]], *, owner: str | None, now: str,
    status: str | None, finish: bool, output_json: str | None, error_json: str | None, release: bool,
    wake_at: str | None, notify: bool, lean: bool,
) -> tuple[tuple[Statement, Statement], tuple[Any, ...]]:  # fmt: skip
    """An append's statements (durable, relaxed: a step's ``_STEP``, a run's end ``_END``, else
    ``wflo_append``'s) and its parameters. ``lean``: the schema has ``wflo_lease_lost`` (m025)."""
    if lean and len(rows) == 1 and wake_at is None:
        if _is_step(rows, status, finish, release, notify, wake_at):
            return _STEP_ALONE, (new.seq, new.hash, now, run_id, head.seq, owner, *rows[0], run_id)
        if finish and notify and status is not None:
            return _END_ALONE, (new.seq, new.hash, now, status, output_json, error_json, now, run_id, head.seq,
                                owner, *rows[0], run_id)  # fmt: skip
    cols = list(zip(*rows, strict=True)) if rows else [()] * 7
    return _APPEND_ALONE, (run_id, head.seq, owner, new.seq, new.hash, now, status, finish, output_json, error_json,
                           release, wake_at, "wflo_runs" if notify else None, *[array_text(c) for c in cols[1:]])  # fmt: skip


def _is_step(
    rows: list[tuple[Any, ...]], status: str | None, finish: bool, release: bool, notify: bool, wake_at: str | None
) -> bool:
    """Whether an append is a step's (``_STEP``, on a schema with m025): one event, and of the
    run's projection only its head moves."""
    return len(rows) == 1 and status is None and not (finish or release or notify) and wake_at is None


def _step_values(
    run_id: str, head: Head, new: Head, row: tuple[Any, ...], owner: str | None, now: str
) -> Values | None:
    """A step's parameters (``_append_statement``'s for ``_STEP``, its one event's ``row``) as the
    direct path sends them (``Values``), built from the append's own values: each encoded as
    the type it has there, without a tuple of them first and the generic encoding's question
    per parameter (issue 20: 24.6 K → 9.5 K instructions of a step's append, measured).
    ``None`` for text holding a NUL byte (never in the hashes, times and canonical JSON
    ``_link`` makes; the run's id, owner, event type or the caller's head could): the caller then sends
    ``_append_statement``'s parameters, which the generic encoding refuses with psycopg's
    error."""
    chain, seq, type_, at, data, prev_hash, event_hash = row
    if (
        "\x00" in run_id
        or "\x00" in chain
        or "\x00" in type_
        or "\x00" in at
        or "\x00" in data
        or "\x00" in prev_hash
        or (owner is not None and "\x00" in owner)
    ):
        return None
    # The same objects (``_link``'s: the run is the chain, the event's time the append's, its
    # hash the new head's) encoded once.
    run, digest, moment, seq_text = run_id.encode(), new.hash.encode(), now.encode(), b"%d" % new.seq
    return Values([
        seq_text, digest, moment, run, b"%d" % head.seq, None if owner is None else owner.encode(),
        run if chain is run_id else chain.encode(), seq_text if seq == new.seq else b"%d" % seq, type_.encode(),
        moment if at is now else at.encode(), data.encode(), prev_hash.encode(),
        digest if event_hash is new.hash else event_hash.encode(), run,
    ])  # fmt: skip


# A claim (``claim``): its update, or the row as it is when the update took nothing (not
# due, another's, ended). Synchronous (see Commit modes).
_CLAIM = f"""
WITH u AS ({{update}} RETURNING {RUN_COLUMNS})
SELECT {RUN_COLUMNS} FROM u
UNION ALL
SELECT {RUN_COLUMNS} FROM runs WHERE id = ? AND NOT EXISTS (SELECT 1 FROM u)
"""

# The statements of the direct path (``_pgdirect``): the hot append alone (no ops: a step's, or
# ``wflo_append``), and a new run with its first events; each durable, and relaxed (see Commit modes), by ``relaxed``.
_APPEND_ALONE = (Statement(_APPEND), Statement(_APPEND_RELAXED))
_STEP_ALONE = (Statement(_STEP), Statement(_STEP_RELAXED))
_END_ALONE = (Statement(_END), Statement(_END))  # a run's end is never relaxed
# A new run: enqueued (durable, ``_CREATE_RUN``), or with an owner (``_CREATE_OWNED``, relaxed: on
# the direct path a create with an owner is always relaxed; see Commit modes).
_CREATE_ALONE = (Statement(_CREATE_RUN), Statement(_CREATE_OWNED_RELAXED))
# ``write_rows``'s statements before its rows: the lease check (``wflo_fence``) and, for a
# relaxed write, the commit's setting (see Commit modes), in one statement.
_FENCE_ALONE = (Statement("SELECT wflo_fence(%s, %s)"), Statement(f"SELECT wflo_fence(%s, %s), {_RELAX}"))
_RELAX_ALONE = Statement(f"SELECT {_RELAX}")
# ``write_rows``'s statements by their text as given (``?`` placeholders).
_ROW_STATEMENTS: dict[str, Statement] = {}


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
        return PsycopgPool(self)

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
        """Never relaxed here: a claim lost with the server, its claimer alive, would let two
        workers start the same step (see Commit modes)."""
        if getattr(self._local, "held", None) is not None:
            return super()._claim_tx(fn, relaxed=False)  # inside a caller's transaction: commits with it

        def go() -> T:
            with self._connection() as conn:
                cur, end = conn.cursor(), conn.cursor()
                try:
                    with conn.pipeline():
                        cur.execute("BEGIN")
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
        """One statement (the update, the row as it is if it took nothing), prepared on each
        connection, and after it the reads of ``read_ahead`` (in the same implicit transaction:
        after the update took the run's row), all in one round trip. The reads' answers are kept only if the run is now ours."""
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
        prepared = PREPARED.setdefault(conn, set())
        for stmt in (*_STEP_ALONE, _END_ALONE[0], *_APPEND_ALONE, *_CREATE_ALONE):  # the statements of ``_direct``
            try:
                with conn.lock:
                    prepare(self, conn, stmt, prepared)
            except self._psycopg.Error:
                break  # not migrated yet: prepared at first use instead
        update, params = self._claim_update(None, "", "", 0.0, True)
        try:
            conn.execute(self._sql(_CLAIM.format(update=update)), (*params, ""), prepare=True)
        except self._psycopg.Error:
            if not self._idle(conn):
                conn.rollback()

    # Whether a step's append may be the lean statement (``_STEP``): its schema has m025's
    # ``wflo_lease_lost``. True once the schema is known to be this wflo's (``ensure_schema``,
    # ``migrate``); else (a store opened without checking its schema) read once from it.
    _lean_step: bool | None = None

    def ensure_schema(self, auto_migrate: bool = True) -> None:
        super().ensure_schema(auto_migrate)
        self._lean_step = True

    def migrate(self) -> list[str]:
        applied = super().migrate()
        self._lean_step = True
        return applied

    def _lean(self) -> bool:
        lean = self._lean_step
        if lean is None:
            lean = self._lean_step = self.schema_version() > MIGRATIONS.index(M025_PGSTEP_LEAN_STEP)
        return lean

    def _loop_statement(
        self, run_id: str, head: Head, new: Head, rows: list[tuple[Any, ...]], owner: str | None, now: str
    ) -> tuple[tuple[Statement, Statement], Sequence[Any]]:
        """The statements (durable, relaxed) and parameters of an append from the event loop
        (``LoopWriter``: events alone, no change of the run's projection)."""
        lean = self._lean()
        if lean and len(rows) == 1:  # a step's (``_is_step``: nothing else of the run changes here)
            values = _step_values(run_id, head, new, rows[0], owner, now)
            if values is not None:
                return _STEP_ALONE, values
        return _append_statement(run_id, head, new, rows, owner=owner, now=now, status=None, finish=False,
                                 output_json=None, error_json=None, release=False, wake_at=None, notify=False,
                                 lean=lean)  # fmt: skip

    # The direct path's statement on its own (``_pgdirect``), as this store's methods: a store's
    # sends go through its own attribute, which a test can replace on that store alone.
    _direct = direct  # run it on the calling thread
    _direct_gen = direct_gen  # the same, as a generator to drive from the event loop

    # ----------------------------------------------------------------- on the event loop
    def loop_writer(self, key: Any) -> LoopWriter | None:
        """An async run's appends written from its event loop (see ``Store.loop_writer``):
        a pooled connection idle at once (no wait for one) and ``key``'s place in the order of
        the store's threads (nothing of the run queued or running there), else ``None``. Not
        inside a transaction this thread holds, nor after a fork (the parent's pool)."""
        if getattr(self._local, "held", None) is not None or self._pool_pid != process_id():
            return None
        pool = self._pool
        if not isinstance(pool, PsycopgPool):
            return None
        executor = self._offloader()
        token = executor.take(key)
        if token is None:
            return None
        conn = pool.get_idle()
        if conn is None:
            executor.give_back(key, token)
            return None
        return LoopWriter(self, conn, executor, key, token, self._loop_statement)

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
            if getattr(exc, "sqlstate", None) == LEASE_LOST:
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
                    if isinstance(exc, psycopg.Error) and exc.sqlstate == LEASE_LOST and fenced:
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
        # Straight to libpq (issue 20; see ``_pgdirect.direct_rows``): the lease check, the relaxed
        # commit's setting and one statement per row, pipelined as one implicit transaction
        # that commits at its sync: one round trip, as ``write_batch``'s pipeline, without its
        # cursor, BEGIN and COMMIT. Inside a caller's transaction, with nothing to write, or
        # with a libpq that has no pipeline mode: ``write_batch``, as before.
        psycopg = self._psycopg
        if not rows or getattr(self._local, "held", None) is not None or not psycopg.Pipeline.is_supported():
            return super().write_rows(sql, rows, fence=fence, relaxed=relaxed)
        stmt = _ROW_STATEMENTS.get(sql)
        if stmt is None:
            stmt = Statement(self._sql(sql))
            if len(_ROW_STATEMENTS) < 64:  # a few texts (the checkpointer's two): kept
                _ROW_STATEMENTS[sql] = stmt
        batch: list[tuple[Statement, Sequence[Any]]] = []
        if fence is not None:
            batch.append((_FENCE_ALONE[relaxed], fence))
        elif relaxed:
            batch.append((_RELAX_ALONE, ()))
        batch.extend((stmt, row) for row in rows)

        def go() -> None:
            with self._connection() as conn:
                if not alone(conn):
                    super(PostgresStore, self).write_rows(sql, rows, fence=fence, relaxed=relaxed)
                    return
                try:
                    direct_rows(self, conn, batch)
                except psycopg.Error as exc:
                    if fence is not None and getattr(exc, "sqlstate", None) == LEASE_LOST:
                        raise LeaseLost(run_id=fence[0], owner=fence[1]) from None
                    raise

        self._retrying(go)

    def _create_run_once(
        self, values: tuple[Any, ...], rows: list[tuple[Any, ...]], lease_seconds: float | None
    ) -> tuple[tuple[Any, ...] | None, bool]:
        params = _create_params(values, rows, lease_seconds)
        # A run its caller executes now (it has an owner) starts relaxed; an enqueued one is
        # durable before its handle is returned. See Commit modes.
        owned = _owned(rows, lease_seconds)
        with self._connection() as conn:
            relax = lease_seconds is not None and self._idle(conn)
            if alone(conn) and relax == owned:  # straight to libpq: see ``_direct``
                result = self._direct(conn, _CREATE_ALONE[relax], params)
                if owned:  # ``_CREATE_OWNED``: a new run's answer, else none
                    return (_written(values, new_run_lease(result)), True) if result.ntuples else (None, False)
                row = first_row(result)
            else:
                sql = (_CREATE_OWNED_RELAXED if relax else _CREATE_OWNED) if owned else \
                    (_CREATE_RUN_RELAXED if relax else _CREATE_RUN)  # fmt: skip
                row = conn.execute(sql, params).fetchone()
        if row is None:  # not created: the id exists (``_CREATE_OWNED`` answers nothing then)
            return None, False
        if not row[-2]:  # the id existed: its row as stored
            return tuple(row[:-2]), False
        return _written(values, row[LEASE_COLUMN]), True

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
        """The fenced append as one statement (a step's, or ``wflo_append``); with ops, that
        statement, the ops' statements and the commit are pipelined: one round trip unless an op
        waits for an answer before the commit. ``relaxed`` (never with ops): see Commit modes."""
        psycopg = self._psycopg
        after: list[Callable[[], None]] = []
        with self._connection() as conn:
            statements, params = _append_statement(
                run_id, head, new, rows, owner=owner, now=now, status=status, finish=finish, output_json=output_json,
                error_json=error_json, release=release, wake_at=wake_at, notify=notify, lean=self._lean(),
            )  # fmt: skip
            if not ops and alone(conn):  # its own transaction: straight to libpq
                return self._send_alone(conn, statements[relaxed], params, run_id, owner)
            sql, sql_relaxed = statements[0].sql, statements[1].sql
            cur = conn.cursor()
            try:
                if not ops:
                    relax = relaxed and self._idle(conn)
                    cur.execute(sql_relaxed if relax else sql, params)  # its own transaction
                else:
                    op_cur = conn.cursor()
                    try:
                        with conn.pipeline() as pipeline:
                            op_cur.execute("BEGIN")
                            cur.execute(sql, params)
                            after = run_ops(ops, _PipelinedCursor(op_cur, pipeline))
                            op_cur.execute("COMMIT")
                    except BaseException:
                        self._roll_back(conn)
                        raise
                    finally:
                        op_cur.close()
                row = cur.fetchone()
            except psycopg.Error as exc:
                if getattr(exc, "sqlstate", None) == LEASE_LOST:
                    raise LeaseLost(run_id=run_id, owner=owner) from None
                raise
            finally:
                cur.close()
            for then in after:  # committed; read the ops' answers while the connection is ours
                then()
        return bool(row[0])

    def _append_step(
        self, run_id: str, head: Head, new: Head, row: tuple[Any, ...], owner: str | None, now: str
    ) -> bool:
        """A step's append (one event fenced on ``owner``, only the head moves) on a schema
        with m025: its parameters ready for libpq at once (``_step_values``), sent alone on a
        pooled connection taken and given back here, as ``_connection`` does but without making
        it this thread's ``held`` (nothing on this thread asks the store anything while it is
        out): that object, the thread-local set and cleared and four calls were ~6 K of the
        ~111 K instructions of a step's append (issue 20, measured). Inside a caller's
        transaction, on an older schema, or with a NUL in its text: the shared path."""
        values = None
        if getattr(self._local, "held", None) is None and (self._lean_step or self._lean()):
            values = _step_values(run_id, head, new, row, owner, now)
        if values is not None:
            pool = self._get_pool()
            conn = pool.get()
            broken = False
            try:
                if alone(conn):  # always, for a pooled connection; else the shared path below
                    return self._send_alone(conn, _STEP_ALONE[False], values, run_id, owner)
            except BaseException as exc:
                broken = self._is_disconnect(exc) or self._conn_broken(conn)
                raise
            finally:
                pool.put(conn, broken=broken)
        return super()._append_step(run_id, head, new, row, owner, now)

    def _send_alone(self, conn: Any, stmt: Statement, params: Sequence[Any], run_id: str, owner: str | None) -> bool:
        """An append's statement in its own transaction through ``_direct``: the run's cancel
        request; ``LeaseLost`` when the fence failed (WF001)."""
        try:
            value = first_value(self._direct(conn, stmt, params))
        except self._psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) == LEASE_LOST:
                raise LeaseLost(run_id=run_id, owner=owner) from None
            raise
        return value is not None and int(value) != 0

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
