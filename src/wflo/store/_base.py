"""The store base class: every query and all shared logic; backends add only dialect hooks.

Concurrency model. Connections come from a bounded pool per store and process, one per
transaction (see ``_conn`` and ``_pool``). A run's journal has one writer at a time, the
holder of the run's lease. Lease times are read from the store's clock (``_clock``), never a
worker's, so a worker whose clock runs ahead cannot see a live lease as expired. Every append
is fenced on ``(lease_owner, last_seq)`` in the same statement that advances the run's head,
so a worker whose lease was taken over cannot write another event (it gets ``LeaseLost``),
and two writers can never both extend the same link. The events and the ``runs`` projection
change in one transaction.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any, TypeVar

from .._errors import LeaseLost, RunNotFoundError, SchemaVersionError
from ._chain import GENESIS, canonical_json, json_string, link_hash
from ._claim import QueueRule, claim_next
from ._conn import Connections
from ._feed import ChangeFeed, Waiter
from ._migrations import MIGRATIONS, SCHEMA_VERSION
from ._records import (
    RUN_COLUMNS,
    Event,
    Head,
    NewEvent,
    RunRecord,
    iso,
    now_iso,
)

T = TypeVar("T")

SYSTEM_CHAIN = "system"

# The events of an append that may commit without waiting for the disk (PostgreSQL: see
# "Commit modes" in ``_postgres``): markers that an execution of the run began, written alone
# (no ops, no change of status, lease or wake-up). Nothing outside the run depends on them
# before the run's next write, which commits synchronously and so makes them durable too.
RELAXED_MARKERS = frozenset({"run.started", "run.resumed"})

# A write to run in the same transaction as an append (e.g. a budget settlement). It may
# return a function to call once the transaction committed: an op that needs what its
# statements answered reads it there, so that on PostgreSQL the whole append, ops included,
# is sent in one round trip (pipelined) instead of waiting for each answer in turn.
StoreOp = Callable[[Any], "Callable[[], None] | None"]


def _json_or_null(text: str | None) -> str:
    """``canonical_json`` of a string or ``None``."""
    return "null" if text is None else encode_basestring(text)


def run_ops(ops: Sequence[StoreOp], cur: Any) -> list[Callable[[], None]]:
    """Run ``ops`` on ``cur``; the functions they ask to call after the commit."""
    after = []
    for op in ops:
        then = op(cur)
        if then is not None:
            after.append(then)
    return after


INSERT_EVENT = "INSERT INTO events (chain, seq, type, at, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)"


@functools.cache
def _head_update(
    placeholder: str, status: bool, finish: bool, release: bool, wake_at: bool, owner: bool
) -> tuple[str, str]:
    """:meth:`Store._move_head`'s fenced update for one shape of append (which columns it
    sets), with ``placeholder`` for ``?``: the common form, and the one with ``RETURNING``.
    Built once per shape (a step's append has one), not on every append."""
    sets = ["last_seq = ?", "last_hash = ?", "updated_at = ?"]
    if status:
        sets.append("status = ?")
    if finish:
        sets += ["output = ?", "error = ?", "finished_at = ?", "wake_at = NULL"]
    if release or finish:
        sets += ["lease_owner = NULL", "lease_expires_at = NULL"]
    if wake_at:
        # Keep an earlier wake-up (a decision that came in while we were running).
        sets.append("wake_at = CASE WHEN wake_at IS NOT NULL AND wake_at < ? THEN wake_at ELSE ? END")
    # Fenced on both the lease owner and the head: a worker paused past its lease (GC, a
    # partition) that wakes up must not write, and two writers that both think they own the
    # run must not both link to the same head; the chain would fork.
    fence = "lease_owner = ?" if owner else "lease_owner IS NULL"
    update = f"UPDATE runs SET {', '.join(sets)} WHERE id = ? AND last_seq = ? AND {fence}"
    forms = (update + " AND cancel_requested = 0", update + " RETURNING cancel_requested")
    return forms if placeholder == "?" else (forms[0].replace("?", placeholder), forms[1].replace("?", placeholder))


def fenced_update(cur: Any, update: tuple[str, str], params: Sequence[Any], run_id: str, owner: str | None) -> bool:
    """Run one of :func:`_head_update`'s pairs in the caller's write transaction; returns the
    run's cancel request, raises ``LeaseLost`` when it updated nothing.

    No ``RETURNING`` on the common path: on SQLite (the store that runs this) an UPDATE ...
    RETURNING costs about 11 µs in a step's transaction against 2 µs without (measured, issue
    20). A run with no cancel request is updated by the fenced UPDATE that also requires
    ``cancel_requested = 0``: one row changed means the lease held and nobody asked to cancel.
    No row: the same fenced UPDATE again with ``RETURNING`` (the run was asked to cancel, or the
    lease is lost), in the same write transaction, so under the same lock."""
    cur.execute(update[0], params)
    if cur.rowcount == 1:
        return False
    cur.execute(update[1], params)
    row = cur.fetchone()
    if row is None:
        raise LeaseLost(run_id=run_id, owner=owner)
    return bool(row[0])


class Store(Connections):
    """A wflo store: runs, their hash-chained journals, and the system chain.

    Subclasses implement only the dialect hooks (connecting, beginning a write transaction,
    claiming the next run, notifying waiters, telling a lost connection apart).
    """

    dialect: str = "abstract"

    # ----------------------------------------------------------------- dialect hooks
    skip_locked = ""
    """Suffix of a claim's candidate query that passes over rows other claimers hold
    (PostgreSQL ``FOR UPDATE SKIP LOCKED``); SQLite's write lock already excludes them."""

    claim_outside_lock = False
    """Look for a claimable run before taking the write lock (SQLite: one writer at a time)."""

    def _lock_queue(self, cur: Any, queue: str) -> None:
        """Make claims of one named queue wait for each other (its limits are counted inside)."""

    def _time_sql(self, clock: datetime | None, offset_seconds: float = 0.0) -> tuple[str, list[Any]]:
        """Now (plus an offset) by the store's clock as SQL text and its parameters.

        The default is ``clock`` (read with :meth:`_clock`) as a parameter. A store whose
        clock is the server's (PostgreSQL) computes it in the statement instead, so that a
        claim does not wait for one round trip more to read the clock first.
        """
        assert clock is not None
        return "?", [iso(clock, offset_seconds)]

    def _batch(self, cur: Any) -> AbstractContextManager[Any]:
        """Statements run inside are sent together and answered together (PostgreSQL: a
        nested pipeline, one round trip); elsewhere nothing changes."""
        return nullcontext()

    server_clock = False
    """:meth:`_time_sql` needs no clock read beforehand (``clock`` may be ``None``)."""

    def _claim_tx(self, fn: Callable[[Any], Callable[[], T]], *, relaxed: bool = True) -> T:
        """Run ``fn(cursor)`` in a write transaction, relaxed by default (a claim); call what it
        returns once the transaction committed and return that. A relaxed SQLite commit is lost
        only with the machine, and every claimer on it; PostgreSQL's claims are synchronous (a
        server crash is not its claimers': see "Commit modes" in ``_postgres``).

        PostgreSQL sends the transaction pipelined: statements go out without waiting for
        the answers of those before, and only reading an answer waits (one round trip for
        everything sent until then), so ``fn`` reads as late as it can. The function it
        returns reads the answers of its last statements, sent with the commit.
        """

        def go() -> T:
            with self._tx(relaxed=relaxed) as cur:
                return fn(cur)()

        return self._retrying(go)

    def _clock(self, cur: Any) -> datetime:
        """Now by the store's clock, read inside the transaction ``cur`` belongs to.

        Lease expiry is judged on this clock only. The default is this machine's clock: an
        embedded SQLite store has one machine, whose clock every process on it shares.
        """
        return datetime.now(UTC)

    def now(self, offset_seconds: float = 0.0, cur: Any = None) -> str:
        """Now (plus an offset) by the store's clock, as stored text.

        Deadlines that several machines judge (leases, approval timeouts, wake-ups) are set
        and compared on this one clock, so a worker whose own clock is skewed cannot make a
        deadline pass early or late. ``cur``: read inside that transaction.
        """
        if cur is not None:
            return iso(self._clock(cur), offset_seconds)

        def go() -> datetime:
            with self._connection() as conn:
                c = conn.cursor()
                try:
                    return self._clock(c)
                finally:
                    c.close()

        return iso(self._retrying(go), offset_seconds)

    def ask_now(self, cur: Any) -> Callable[[], str]:
        """:meth:`now` inside the transaction ``cur`` belongs to, in two halves: the read is
        sent now, what this returns gives its answer. In a pipelined transaction
        (:meth:`write_batch` on PostgreSQL) it goes out with the statements sent before it
        and is run after them (after their locks are held): no round trip of its own."""
        return lambda: iso(self._clock(cur))

    def _notify(self, cur: Any, channel: str, payload: str) -> None:
        """Tell waiting workers that something changed (PostgreSQL NOTIFY); default: nothing."""

    def wait_for_notification(self, timeout: float) -> bool:
        """Block up to ``timeout`` s for a change by another connection; True if one came.

        A change committed before this call is not seen; a loop that looks, then waits,
        should hold one ``changes()`` waiter across its looks instead.
        """
        with self.changes() as waiter:
            return waiter.wait(timeout)

    # ----------------------------------------------------------------- change feed
    def changes(self, key: str | None = None) -> Waiter:
        """A waiter woken soon after a change that may concern run ``key`` (``None``: any run)
        is committed by another connection (see ``_feed``). Close it when done."""
        feed = self._feed
        if feed is None or feed.pid != os.getpid():
            with self._pool_lock:
                if self._feed is None or self._feed.pid != os.getpid():
                    self._feed = ChangeFeed(self)
                feed = self._feed
        return feed.waiter(key)

    _feed: ChangeFeed | None = None

    def _open_watch(self) -> Any:
        """A connection (or other handle) the change feed watches; default: none."""
        return None

    def _watch(self, watch: Any, timeout: float) -> list[str | None]:
        """Block up to ``timeout`` s for changes on ``watch``; their run ids (``None``: unknown)."""
        time.sleep(timeout)
        return []

    def _close_watch(self, watch: Any) -> None:
        """Let go of what ``_open_watch`` gave."""

    def next_wake(self) -> str | None:
        """The earliest time a waiting run becomes claimable (``wake_at``), or ``None``."""
        row = self._fetchone(
            "SELECT MIN(wake_at) FROM runs WHERE status = 'waiting' AND lease_owner IS NULL AND wake_at IS NOT NULL"
        )
        return None if row is None or row[0] is None else str(row[0])

    # ----------------------------------------------------------------- schema
    def schema_version(self) -> int:
        def go() -> int:
            with self._connection() as conn:
                cur = conn.cursor()
                try:
                    try:
                        cur.execute("SELECT value FROM wflo_meta WHERE key = 'schema_version'")
                    except Exception as exc:
                        if self._translate_error(exc) is not None or self._is_disconnect(exc):
                            raise
                        self._rollback_quietly(conn)
                        return 0  # no wflo_meta table: a new, empty store
                    row = cur.fetchone()
                    return int(row[0]) if row else 0
                finally:
                    cur.close()

        return self._retrying(go)

    def _rollback_quietly(self, conn: Any) -> None:
        """After a failed read, leave the connection usable (PostgreSQL aborts the tx)."""

    def migrate(self) -> list[str]:
        """Apply the migrations this store lacks; return their names. Safe to run concurrently.

        A connection dropped mid-migration rolls the whole migration back; it is run again.
        """
        return self._retrying(self._migrate_once)

    def _migrate_once(self) -> list[str]:
        applied: list[str] = []
        with self._tx() as cur:
            self._lock_for_migration(cur)
            cur.execute("CREATE TABLE IF NOT EXISTS wflo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cur.execute("SELECT value FROM wflo_meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(url=self.url, found=version, expected=SCHEMA_VERSION)
            for migration in MIGRATIONS[version:]:
                for statement in migration.statements(self.dialect):
                    cur.execute(statement)
                if migration.then is not None:
                    migration.then(self, cur)
                applied.append(migration.name)
            if applied:
                if row:
                    self.execute(
                        cur, "UPDATE wflo_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                    )
                else:
                    self.execute(
                        cur, "INSERT INTO wflo_meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
        return applied

    def _lock_for_migration(self, cur: Any) -> None:
        """Serialise concurrent migrations (PostgreSQL: advisory lock; SQLite: the write lock)."""

    def check(self) -> int:
        """Raise ``SchemaVersionError`` unless the schema is exactly this wflo's; return it."""
        version = self.schema_version()
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(url=self.url, found=version, expected=SCHEMA_VERSION)
        return version

    def ensure_schema(self, auto_migrate: bool = True) -> None:
        version = self.schema_version()
        if version == SCHEMA_VERSION:
            return
        if version < SCHEMA_VERSION and auto_migrate:
            self.migrate()
            return
        raise SchemaVersionError(url=self.url, found=version, expected=SCHEMA_VERSION)

    # ----------------------------------------------------------------- chains
    @staticmethod
    def _link(
        chain: str, head: Head, events: Sequence[NewEvent], now: str | None = None
    ) -> tuple[Head, list[tuple[Any, ...]]]:
        """Number and hash ``events`` after ``head``: the rows to insert and the new head.
        An event without its own time is stamped ``now`` (default: the clock, read here)."""
        seq, prev = head.seq, head.hash
        rows = []
        for ev in events:
            seq += 1
            at = ev.at or now or now_iso()
            data_json = ev.data_json
            if data_json is None:
                data_json = canonical_json(ev.data)
            digest = link_hash(prev, chain, seq, ev.type, at, data_json)
            rows.append((chain, seq, ev.type, at, data_json, prev, digest))
            prev = digest
        return Head(seq, prev), rows

    def _insert_rows(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        cur.executemany(
            self._sql(INSERT_EVENT),
            rows,
        )

    def _insert_events(self, cur: Any, chain: str, head: Head, events: Sequence[NewEvent]) -> Head:
        new, rows = self._link(chain, head, events)
        self._insert_rows(cur, rows)
        return new

    def events(self, chain: str, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        """The events of a chain (a run id or ``"system"``) in order."""
        sql = "SELECT chain, seq, type, at, data, prev_hash, hash FROM events WHERE chain = ? AND seq > ? ORDER BY seq"
        params: list[Any] = [chain, after_seq]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            Event(r[0], int(r[1]), r[2], r[3], json.loads(r[4]), r[5], r[6], data_json=r[4])
            for r in self._fetchall(sql, params)
        ]

    def append_system(self, events: Sequence[NewEvent], ops: Sequence[StoreOp] = ()) -> Head:
        """Append events to the system chain (logins, budget and policy changes, exports)."""
        return self.append_chain(SYSTEM_CHAIN, events, ops)

    def append_chain(self, chain: str, events: Sequence[NewEvent], ops: Sequence[StoreOp] = ()) -> Head:
        """Append to a chain that is not a run's (its head lives in ``chain_heads``)."""

        def go() -> Head:
            with self._connection():  # held past the commit, for the ops' answers
                new, after = self._append_chain_once(chain, events, ops)
                for then in after:
                    then()
            return new

        return self._retrying(go)

    def _append_chain_once(
        self, chain: str, events: Sequence[NewEvent], ops: Sequence[StoreOp]
    ) -> tuple[Head, list[Callable[[], None]]]:
        with self._tx() as cur:
            self._lock_chain_head(cur, chain)
            self.execute(cur, "SELECT last_seq, last_hash FROM chain_heads WHERE chain = ?", (chain,))
            row = cur.fetchone()
            head = Head(int(row[0]), row[1]) if row else Head(0, GENESIS)
            new = self._insert_events(cur, chain, head, events)
            if row:
                self.execute(
                    cur,
                    "UPDATE chain_heads SET last_seq = ?, last_hash = ? WHERE chain = ?",
                    (new.seq, new.hash, chain),
                )
            else:
                self.execute(
                    cur,
                    "INSERT INTO chain_heads (chain, last_seq, last_hash) VALUES (?, ?, ?)",
                    (chain, new.seq, new.hash),
                )
            return new, run_ops(ops, cur)

    def _lock_chain_head(self, cur: Any, chain: str) -> None:
        """PostgreSQL: make concurrent appenders of one chain wait for each other."""

    # ----------------------------------------------------------------- runs
    def create_run(
        self,
        *,
        run_id: str,
        workflow: str,
        input: Any,
        options: dict[str, Any] | None = None,
        parent_id: str | None = None,
        tenant: str | None = None,
        owner: str | None = None,
        lease_seconds: float = 30.0,
        event_data: dict[str, Any] | None = None,
        queue: str | None = None,
        priority: int = 0,
        partition_key: str | None = None,
        input_json: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """Create a run (queued, or running under ``owner``); idempotent on ``run_id``.

        A queued run may belong to a named ``queue`` (claimed highest ``priority`` first, one
        ``partition_key`` at a time, within the queue's limits; see ``_claim``).
        ``input_json``: ``canonical_json(input)``, when the caller has it already (the engine
        does for arguments that are scalars and strings): stored and hashed as it is.
        Returns the run and whether this call created it.
        """
        now = now_iso()
        values, rows = self._new_run(
            run_id, workflow, input, input_json, options, parent_id, tenant, owner, event_data, queue, priority,
            partition_key, now,
        )  # fmt: skip

        def go() -> tuple[RunRecord, bool]:
            row, created = self._create_run_once(values, rows, lease_seconds if owner is not None else None)
            if row is None:  # created by another process at this very moment: read it now
                return self.get_run(run_id), False
            return RunRecord.from_row(row), created

        return self._retrying(go)

    @classmethod
    def _new_run(
        cls, run_id: str, workflow: str, input: Any, input_json: str | None, options: dict[str, Any] | None,
        parent_id: str | None, tenant: str | None, owner: str | None, event_data: dict[str, Any] | None,
        queue: str | None, priority: int, partition_key: str | None, now: str,
    ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:  # fmt: skip
        """A new run's row (``_create_run_once``'s ``values``) and its first events' rows: its
        ``run.created`` event, and ``run.started`` when it has an ``owner``. The input is
        serialised once (issue 20: it was three times, for its column, inside the created
        event's data, and to read it back): the created event's canonical JSON is written
        around the input's text, its keys in canonical order, the same bytes as
        ``canonical_json`` of its data; with ``event_data``, that data is serialised whole."""
        if input_json is None:
            input_json = canonical_json(input)
        if event_data:
            created_data = {"workflow": workflow, "input": input, "parent_id": parent_id, "tenant": tenant}
            created_data.update(event_data)
            created = NewEvent("run.created", created_data, now)
        else:
            created_json = (
                f'{{"input":{input_json},"parent_id":{_json_or_null(parent_id)},"tenant":{_json_or_null(tenant)},'
                f'"workflow":{json_string(workflow)}}}'
            )
            created = NewEvent("run.created", {}, now, created_json)
        new_events = [created]
        if owner is not None:
            new_events.append(NewEvent("run.started", {}, now, f'{{"attempt":1,"worker":{json_string(owner)}}}'))
        head, rows = cls._link(run_id, Head(0, GENESIS), new_events)
        values = (run_id, workflow, "running" if owner is not None else "queued", input_json, parent_id, tenant,
                  canonical_json(options or {}), owner, head.seq, head.hash, 1 if owner else 0, now, now, queue,
                  priority, partition_key, now if owner else None)  # fmt: skip
        return values, rows

    def _create_run_once(
        self, values: tuple[Any, ...], rows: list[tuple[Any, ...]], lease_seconds: float | None
    ) -> tuple[tuple[Any, ...] | None, bool]:
        """Insert the run and its first events unless the id exists; (its row, created).

        ``values``: id, workflow, status, input, parent_id, tenant, options, lease_owner,
        last_seq, last_hash, attempts, created_at, updated_at, queue, priority, partition_key,
        started_at. The lease's expiry is read from
        the store's clock here (``lease_seconds`` None: no lease). Written as one statement
        with ``RETURNING``, so the new run is not read back.
        """
        with self._tx() as cur:
            lease = iso(self._clock(cur), lease_seconds) if lease_seconds is not None else None
            v = values
            self.execute(
                cur,
                f"INSERT INTO runs ({RUN_COLUMNS}, queue, priority, partition_key, started_at) "
                "VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?, ?, 0, NULL, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?) "
                f"ON CONFLICT (id) DO NOTHING RETURNING {RUN_COLUMNS}, queue",
                (*v[:8], lease, *v[8:]),
            )
            row = cur.fetchone()
            if row is None:
                self.execute(cur, f"SELECT {RUN_COLUMNS}, queue FROM runs WHERE id = ?", (v[0],))
                return cur.fetchone(), False
            self._insert_rows(cur, rows)
            if lease_seconds is None:
                self._notify(cur, "wflo_runs", v[0])
            return tuple(row), True

    # A run by id prefix through an index: SQLite's LIKE ignores case, so it cannot use the
    # primary key's (binary) order; a range over that order can, and LIKE keeps it exact.
    _prefix_sql = "id >= ? AND id < ? AND id LIKE ? ESCAPE '!'"

    def _prefix_params(self, prefix: str) -> tuple[str, ...]:
        like = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        return (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1), like)

    def get_run(self, run_id: str) -> RunRecord:
        row = self._fetchone(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise RunNotFoundError(run_id=run_id)
        return RunRecord.from_row(row)

    def find_run(self, prefix: str) -> RunRecord:
        """A run by full id or by a unique id prefix (as the CLI accepts)."""
        row = self._fetchone(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (prefix,))
        if row is not None:
            return RunRecord.from_row(row)
        if len(prefix) >= 4:
            rows = self._fetchall(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE {self._prefix_sql} LIMIT 2", self._prefix_params(prefix)
            )
            if len(rows) == 1:
                return RunRecord.from_row(rows[0])
            if rows:
                message = f"{prefix!r} is the start of more than one run id: give more of it"
                raise RunNotFoundError(message, run_id=prefix)
        raise RunNotFoundError(run_id=prefix)

    def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        parent_id: str | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("status", status), ("workflow", workflow), ("parent_id", parent_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit)
        return [RunRecord.from_row(r) for r in self._fetchall(sql, params)]

    def append(
        self,
        run_id: str,
        head: Head,
        events: Sequence[NewEvent],
        *,
        owner: str | None,
        status: str | None = None,
        output: Any = None,
        error: dict[str, Any] | None = None,
        finish: bool = False,
        release: bool = False,
        wake_at: str | None = None,
        ops: Sequence[StoreOp] = (),
        output_json: str | None = None,
    ) -> Head:
        """Append events to a run's journal and update its projection, atomically.

        Fenced: succeeds only while ``owner`` holds the lease (``None``: while nobody does)
        and the run's head is still ``head``. Raises ``LeaseLost`` otherwise.
        ``output_json``: ``canonical_json(output)``, when the caller has it already.
        """
        now = now_iso()
        if (
            len(events) == 1
            and status is None
            and wake_at is None
            and not (finish or release or ops)
            and events[0].type not in RELAXED_MARKERS
        ):
            # A step's append: one event, only the head moves (``_append_step``).
            def go() -> Head:
                new, rows = self._link(run_id, head, events, now)
                cancel = self._append_step(run_id, head, new, rows[0], owner, now)
                return Head(new.seq, new.hash, True) if cancel else new

        else:
            if not finish or error is not None:
                output_json = None
            elif output_json is None:
                output_json = canonical_json(output)
            error_json = canonical_json(error) if finish and error is not None else None
            notify = finish or status == "waiting" or release  # a released run: another worker takes it now
            relaxed = (
                bool(events)
                and events[0].type in RELAXED_MARKERS
                and not ops
                and not (finish or release or status is not None or wake_at is not None)
                and all(e.type in RELAXED_MARKERS for e in events)
            )

            def go() -> Head:
                new, rows = self._link(run_id, head, events, now)
                cancel = self._append_once(
                    run_id, head, new, rows, owner=owner, now=now, status=status, finish=finish,
                    output_json=output_json, error_json=error_json, release=release, wake_at=wake_at,
                    notify=notify, ops=ops, relaxed=relaxed,
                )  # fmt: skip
                return Head(new.seq, new.hash, True) if cancel else new

        try:
            return self._retrying(go)
        except LeaseLost:
            # After a reconnect the first attempt may have committed without our knowing:
            # if the journal holds exactly our first event at head.seq + 1, it did.
            if events:
                got = self.events(run_id, after_seq=head.seq, limit=len(events))
                if (
                    len(got) == len(events)
                    and all(g.type == e.type for g, e in zip(got, events, strict=True))
                    and got[0].prev_hash == head.hash
                ):
                    run = self.get_run(run_id)
                    if run.last_seq == got[-1].seq and run.lease_owner in (owner, None):
                        return Head(got[-1].seq, got[-1].hash, run.cancel_requested)
            raise

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
        """One fenced append transaction; returns the run's cancel request (portable SQL).

        ``relaxed``: the append is a marker (``RELAXED_MARKERS``) whose commit need not wait
        for the disk; SQLite commits it as any other."""
        with self._connection():  # held past the commit, for the ops' answers
            with self._tx() as cur:
                cancel = self._move_head(
                    cur, run_id, head, new, owner=owner, now=now, status=status, finish=finish,
                    output_json=output_json, error_json=error_json, release=release, wake_at=wake_at,
                )  # fmt: skip
                # The fenced UPDATE holds the run's row lock, so no other writer can be
                # inserting these sequence numbers now.
                self._insert_rows(cur, rows)
                after = run_ops(ops, cur)
                if notify:
                    self._notify(cur, "wflo_runs", run_id)
            for then in after:
                then()
        return cancel

    def _append_step(
        self, run_id: str, head: Head, new: Head, row: tuple[Any, ...], owner: str | None, now: str
    ) -> bool:
        """:meth:`_append_once` of a step's append (one event, fenced on ``owner``, no status,
        end, release, wake-up or ops): a dialect may have a leaner path for it."""
        return self._append_once(
            run_id, head, new, [row], owner=owner, now=now, status=None, finish=False, output_json=None,
            error_json=None, release=False, wake_at=None, notify=False, ops=(),
        )  # fmt: skip

    def _move_head(
        self,
        cur: Any,
        run_id: str,
        head: Head,
        new: Head,
        *,
        owner: str | None,
        now: str,
        status: str | None,
        finish: bool,
        output_json: str | None,
        error_json: str | None,
        release: bool,
        wake_at: str | None,
    ) -> bool:
        """The fenced update of a run's head and projection in the caller's write transaction;
        returns the run's cancel request. Raises ``LeaseLost`` when it updated nothing."""
        params: list[Any] = [new.seq, new.hash, now]
        if status is not None:
            params.append(status)
        if finish:
            params += [output_json, error_json, now]
        if wake_at is not None:
            params += [wake_at, wake_at]
        params += [run_id, head.seq] + ([owner] if owner is not None else [])
        update = _head_update(
            self.placeholder, status is not None, finish, release, wake_at is not None, owner is not None
        )
        return fenced_update(cur, update, params, run_id, owner)

    # ----------------------------------------------------------------- leases
    def claim_next(
        self,
        owner: str,
        lease_seconds: float,
        workflows: Sequence[str] | None = None,
        queues: Sequence[QueueRule] | None = None,
    ) -> RunRecord | None:
        """Take the lease of the next runnable run: abandoned by a dead owner, woken, or queued.

        Only runs of ``workflows`` (default: any) and of no queue or one of ``queues`` are
        taken; a named queue's limits are checked in the claiming transaction (see ``_claim``).
        """
        return claim_next(self, owner, lease_seconds, workflows, queues)

    def claim(self, run_id: str, owner: str, lease_seconds: float, *, woken: bool = False) -> RunRecord:
        """Take the lease of one run if it is free, expired (by the store's clock), or already ours.

        ``woken``: only a ``waiting`` run whose wake-up time has come (by the store's clock) is
        taken; any other run is returned as it is, untouched. A caller waiting for its run to be
        woken claims it this way in one round trip instead of reading it first and then
        claiming it (two). Where a claim takes the database's write lock (SQLite) the run is
        read first, without it, and the lock is taken only for a run that looks due.
        """
        if woken and self.claim_outside_lock:
            seen = self.get_run(run_id)
            if seen.status != "waiting" or seen.wake_at is None or seen.wake_at > iso(self._clock(None)):
                return seen

        def body(cur: Any) -> Callable[[], RunRecord]:
            clock = None if self.server_clock else self._clock(cur)
            update, params = self._claim_update(clock, run_id, owner, lease_seconds, woken)
            self.execute(cur, update, params)
            self.execute(cur, f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
            return lambda: self._claimed_record(cur.fetchone(), run_id)

        return self._claim_tx(body)

    def _claim_update(
        self, clock: datetime | None, run_id: str, owner: str, lease_seconds: float, woken: bool
    ) -> tuple[str, list[Any]]:
        """:meth:`claim`'s update, as ``(sql, params)``: the clock is ``clock`` or, where the
        store's clock is the server's, read inside the statement (``_time_sql``)."""
        now, now_p = self._time_sql(clock)
        until, until_p = self._time_sql(clock, float(lease_seconds))  # one type: one prepared statement
        due, due_p = (
            (f" AND status = 'waiting' AND wake_at IS NOT NULL AND wake_at <= {now}", now_p) if woken else ("", [])
        )
        return (
            f"UPDATE runs SET lease_owner = ?, lease_expires_at = {until}, status = 'running', "
            f"attempts = attempts + 1, wake_at = NULL, updated_at = {now} WHERE id = ? "
            "AND status NOT IN ('succeeded', 'failed', 'cancelled', 'stopped') "
            f"AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires_at < {now}){due}",
            [owner, *until_p, *now_p, run_id, owner, *now_p, *due_p],
        )

    @staticmethod
    def _claimed_record(row: tuple[Any, ...] | None, run_id: str) -> RunRecord:
        if row is None:
            raise RunNotFoundError(run_id=run_id)
        return RunRecord.from_row(row)

    def heartbeat(self, owner: str, run_ids: Sequence[str], lease_seconds: float) -> dict[str, bool]:
        """Extend our leases; return the ids we still hold, each with its cancel request."""
        if not run_ids:
            return {}
        marks = ", ".join("?" * len(run_ids))

        def body(cur: Any) -> Callable[[], dict[str, bool]]:
            # One statement, sent with its commit on PostgreSQL (``_claim_tx``): a worker frozen
            # (SIGSTOP, a long GC pause) in the middle of a beat must not hold its runs' rows
            # locked, or no other worker could claim them until it thaws. Synchronous: a renewal
            # lost in a server crash would let the worker trust a lease the store has not got.
            clock = None if self.server_clock else self._clock(cur)
            until, until_p = self._time_sql(clock, lease_seconds)
            self.execute(
                cur,
                f"UPDATE runs SET lease_expires_at = {until} WHERE lease_owner = ? AND id IN ({marks}) "
                "RETURNING id, cancel_requested",
                [*until_p, owner, *run_ids],
            )
            return lambda: {r[0]: bool(r[1]) for r in cur.fetchall()}

        return self._claim_tx(body, relaxed=False)

    def fence(self, cur: Any, run_id: str, owner: str) -> None:
        """Inside a write transaction: raise ``LeaseLost`` unless ``owner`` holds ``run_id``'s lease.

        Locks the run's row until commit, so the lease cannot change hands before the
        transaction's other writes land. For writes a worker makes outside ``append`` (an
        integration's own tables): ``store.write(lambda cur: (store.fence(cur, rid, me), ...))``.
        """
        self.execute(cur, "SELECT lease_owner FROM runs WHERE id = ?" + self.for_update, (run_id,))
        row = cur.fetchone()
        if row is None or row[0] != owner:
            raise LeaseLost(run_id=run_id, owner=owner)

    def write_batch(self, fn: Callable[[Any], T], *, relaxed: bool = False) -> T:
        """Like :meth:`write`, for a transaction that reads no answers before its commit
        (inserts, upserts, :meth:`fence`): on PostgreSQL it is sent pipelined, one round trip.
        A read inside it waits for the answers of everything sent until then (one round trip
        more), so a transaction that must read sends its reads together, then reads.

        ``relaxed``: the commit need not wait for the disk (PostgreSQL: ``synchronous_commit``
        off, as in "Commit modes" of ``_postgres``; SQLite at ``synchronous=FULL``/``EXTRA``:
        this one commit at ``NORMAL``). A process crash loses nothing; an OS crash or power
        loss can lose it, but only together with every later commit up to the next one that
        waits for the disk (the WAL is one sequence), or until :meth:`sync`. For a write that
        something later in the same order is sure to cover (the LangGraph checkpointer's
        pending writes). Inside a caller's transaction it commits as that transaction does.
        """
        return self.write(fn)

    def write_rows(
        self,
        sql: str,
        rows: Sequence[Sequence[Any]],
        *,
        fence: tuple[str, str] | None = None,
        relaxed: bool = False,
    ) -> None:
        """Run ``sql`` (an insert or upsert) once for each of ``rows``, in one write transaction.

        The same as :meth:`write_batch` with a function that calls :meth:`fence` (when
        ``fence=(run_id, owner)`` is given: ``LeaseLost`` and nothing written unless ``owner``
        holds the run's lease) and then executes ``sql`` per row; ``relaxed`` as there. For an
        integration's writes that read nothing back and are made often from threads beside the
        caller's work (the LangGraph checkpointer's): SQLite runs them on the pooled connection
        directly, with the same lock, lease check, commit mode and retry, without the general
        transaction's layers, whose per-call Python competes with those threads for the
        interpreter lock. PostgreSQL sends the lease check, the relaxed commit's setting and the
        rows straight to libpq, prepared, as one implicit transaction (one round trip, no
        ``BEGIN``/``COMMIT``, no cursor). Inside a caller's transaction both go through
        ``write_batch``.
        """

        def go(cur: Any) -> None:
            if fence is not None:
                self.fence(cur, *fence)
            for row in rows:
                self.execute(cur, sql, row)

        self.write_batch(go, relaxed=relaxed)

    def sync(self) -> None:
        """Make every commit made so far durable, relaxed ones included (see
        :meth:`write_batch`). SQLite: flush the WAL file to disk; PostgreSQL needs nothing
        here (its WAL writer flushes relaxed commits within about 3 x ``wal_writer_delay``)."""

    def release(self, run_id: str, owner: str) -> None:
        """Give up a lease without changing the run (it becomes claimable at once, and idle
        PostgreSQL workers are told so: they claim it now, not at their next poll)."""

        def go() -> None:
            with self._tx() as cur:
                self.execute(
                    cur,
                    "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ?",
                    (run_id, owner),
                )
                if cur.rowcount:
                    self._notify(cur, "wflo_runs", run_id)

        self._retrying(go)

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        with self._tx() as cur:
            self.execute(cur, sql, params)
            return int(cur.rowcount)

    def request_cancel(self, run_id: str) -> RunRecord:
        """Ask a run to stop at its next step boundary; a queued/waiting run stops at once."""
        run = self.get_run(run_id)
        if run.done:
            return run
        self._retrying(lambda: self._write("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,)))
        for _ in range(20):
            run = self.get_run(run_id)
            if run.done or run.lease_owner is not None:
                return run  # its executor (or the next claimer) stops it at a step boundary
            # Nobody is executing it: finish it here, fenced on its head like any writer.
            try:
                self.append(
                    run_id,
                    Head(run.last_seq, run.last_hash),
                    [NewEvent("run.cancelled", {"by": "request", "status_before": run.status})],
                    owner=None,
                    status="cancelled",
                    error={"type": "RunCancelled", "code": "cancelled", "message": f"run {run_id} was cancelled"},
                    finish=True,
                )
                return self.get_run(run_id)
            except LeaseLost:
                continue
        return self.get_run(run_id)

    def set_wake(self, run_id: str, wake_at: str) -> None:
        """Make a waiting run claimable at ``wake_at`` (now: at once)."""

        def go() -> None:
            with self._tx() as cur:
                self.wake(cur, run_id, wake_at)

        self._retrying(go)

    def wake(self, cur: Any, run_id: str, wake_at: str) -> None:
        """``set_wake`` inside a caller's transaction: the run becomes claimable, and waiting
        workers are told, when that transaction commits (not one commit later)."""
        self.execute(
            cur, "UPDATE runs SET wake_at = ? WHERE id = ? AND status IN ('running', 'waiting')", (wake_at, run_id)
        )
        self._notify(cur, "wflo_runs", run_id)  # delivered at commit

    def _notify_now(self) -> None:
        with self._tx() as cur:
            self._notify(cur, "wflo_runs", "")

    def count_runs_by_status(self) -> dict[str, int]:
        """How many runs are in each status (kept by triggers: as fast at a million runs as at ten)."""
        rows = self._fetchall("SELECT status, SUM(n) FROM run_counts GROUP BY status")
        return {r[0]: int(r[1]) for r in rows if int(r[1]) > 0}

    def ping(self) -> None:
        self._fetchone("SELECT 1")

    def close(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None and feed.pid == os.getpid():
            feed.close()
        super().close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
