"""A run's creation sent ahead of its answer (issue 20: an empty workflow in one round trip).

``Store.create_run_ahead`` sends the creation of a new run its caller executes at once and
returns without waiting for the server's answer; the caller reads it (:meth:`CreationAhead.settle`)
at the run's first durable interaction: the start of its first call (step, LLM call, tool,
child, sleep, approval...), any append to its journal, a lease renewal, or at the latest the
next heartbeat (``lease_seconds / 3``). A run whose first interaction is its end sends that end
in the same pipeline (:meth:`CreationAhead.append`): the creation and the end cost one round
trip, not two.

What does not change:

- nothing a call does (its body, an LLM request, a reservation) runs before the creation's
  answer is read: only the workflow's own code before its first call, which is replayed on
  resumption anyway, runs meanwhile;
- the creation commits as it did (relaxed: see "Commit modes" in ``_postgres``); the end is
  durable (its synchronous commit flushes the WAL up to itself, the creation included);
- errors: a creation the server refused raises the same psycopg error ``create_run`` would
  have, at ``settle()`` and at every later one (nothing of the run is written after it); a
  connection lost on the way is dropped and the creation made again through ``create_run``
  (which retries, and finds the run if the first attempt committed unseen);
- fencing: the end's append is fenced on the run's head and owner as ever: it writes nothing
  unless this creation made the run.

Only for a fresh, generated run id (no user id, no idempotency key, no child id derived from a
parent): such a creation cannot find an existing run, so the caller may go on before it knows.
The connection stays out of the pool until the answer is read (at most until the next
heartbeat): a pool of N connections runs at most N such bodies before their first call at once;
an N+1th creation waits for one (``pool_timeout``) as any other statement does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import LeaseLost
from ._chain import canonical_json
from ._records import Head, NewEvent, RunRecord, now_iso

if TYPE_CHECKING:
    from ._base import StoreOp
    from ._postgres import PostgresStore


class CreationAhead:
    """A run's creation sent, its answer not read yet (see the module docstring).

    ``record``: the run as the creation makes it (its lease's expiry unknown: ``None``)."""

    record: RunRecord

    @property
    def pending(self) -> bool:
        """True until the answer has been read (or the creation failed)."""
        raise NotImplementedError

    def settle(self) -> None:
        """Read the creation's answer (once); raise its error, now and at every later call."""
        raise NotImplementedError

    def append(self, head: Head, events: Sequence[NewEvent], *, owner: str, ops: Sequence[StoreOp] = (),
               **projection: Any) -> Head:  # fmt: skip
        """``Store.append`` after the creation: in the same round trip where the store can."""
        raise NotImplementedError


class PgCreationAhead(CreationAhead):
    """PostgreSQL: the creation pipelined on a connection held out of the pool until read."""

    def __init__(
        self,
        store: PostgresStore,
        conn: Any,
        record: RunRecord,
        redo: Callable[[], tuple[RunRecord, bool]],
        *,
        prepared: bool = False,
    ) -> None:
        self.record = record
        self._prepared = prepared  # the statement's preparation was sent first, in the pipeline
        self._store = store
        self._conn: Any = conn  # None once the answer is read
        self._redo = redo
        self._error: BaseException | None = None
        self._unknown = False  # interrupted while reading: made again at the next settle()
        self._lock = threading.Lock()

    @property
    def pending(self) -> bool:
        return self._conn is not None

    def settle(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._read(None)
            elif self._unknown:
                self._unknown = False
                self._again()
        if self._error is not None:
            raise self._error

    def append(self, head: Head, events: Sequence[NewEvent], *, owner: str, ops: Sequence[StoreOp] = (),
               **projection: Any) -> Head:  # fmt: skip
        store = self._store
        with self._lock:
            if self._unknown:
                self._unknown = False
                self._again()
            elif self._conn is not None:
                end = None if ops else _end_params(store, self.record.id, head, events, owner, projection)
                done = self._read(end)  # the creation's answer, at least, is read here
                if done is not None:
                    return done
        if self._error is not None:
            raise self._error
        return store.append(self.record.id, head, events, owner=owner, ops=ops, **projection)

    # ---------------------------------------------------------------- the answers
    def _read(self, end: tuple[Head, tuple[Any, ...]] | None) -> Head | None:
        """Read the creation's answer (and, with ``end``, send the end's append first and read
        its answer too: one round trip). Returns the end's new head, or ``None`` when the end
        was not written here (the caller appends it the usual way). Sets ``_error``."""
        from . import _postgres as pg

        store, conn = self._store, self._conn
        psycopg = store._psycopg
        pgconn = conn.pgconn
        self._conn = None
        try:
            with conn.lock:
                append = pg._APPEND_ALONE[False]
                prepare = end is not None and append.name not in pg._PREPARED.get(conn, ())
                if end is not None:
                    if prepare:  # in the same pipeline: no round trip more
                        pgconn.send_prepare(append.name, append.query)
                    pgconn.send_query_prepared(append.name, _encode(end[1]))
                    pgconn.pipeline_sync()
                skip = 1 if self._prepared else 0
                n = skip + 2 + (2 + prepare if end is not None else 0)
                answers = conn.wait(_answers(psycopg.generators, pgconn, n))
                made, answers = answers[:skip], answers[skip:]
                made_append = answers.pop(2) if prepare else []
                if any(not a or a[-1].status != pg._PIPELINE_SYNC for a in answers[1::2]):
                    raise psycopg.InterfaceError("no pipeline sync after a run's creation")
                pgconn.exit_pipeline_mode()
        except BaseException as exc:
            # Answers may be left unread: the connection cannot be used again.
            pgconn.finish()
            store._get_pool().put(conn, broken=True)
            if not isinstance(exc, Exception):  # an interrupt: the next settle() makes it again
                self._unknown = True
                raise
            # Lost on the way: whether the creation (or the end) committed is unknown.
            self._again()
            return None
        store._get_pool().put(conn)
        stmt = pg._CREATE_ALONE[True]
        if made:
            if made[0] and made[0][-1].error_field(pg._SQLSTATE) == pg._ALREADY_PREPARED:
                pg._PREPARED.setdefault(conn, set()).add(stmt.name)  # the session had it: nothing ran
                self._again()
                return None
            try:
                pg._check(made[0], stmt, pg._COMMAND_OK)
            except psycopg.Error as exc:
                self._error = exc
                return None
            pg._PREPARED.setdefault(conn, set()).add(stmt.name)
        first = answers[0]
        if first and first[-1].error_field(pg._SQLSTATE) == pg._NO_SUCH_STATEMENT:
            # The session lost the statement: nothing ran (nor did the end, fenced on the run).
            pg._PREPARED.get(conn, set()).discard(pg._CREATE_ALONE[True].name)
            self._again()
            return None
        try:
            created = pg._row(pg._check(first, stmt, pg._TUPLES_OK))
        except psycopg.Error as exc:
            self._error = exc
            return None
        if created is None or not created[-2] or created[9] != self.record.lease_owner:
            self._error = LeaseLost(run_id=self.record.id, owner=self.record.lease_owner)
            return None
        if end is None:
            return None
        if prepare:
            if not made_append or made_append[-1].status != pg._COMMAND_OK:
                if made_append and made_append[-1].error_field(pg._SQLSTATE) == pg._ALREADY_PREPARED:
                    pg._PREPARED.setdefault(conn, set()).add(append.name)
                return None  # the end did not run (refused before it): appended the usual way
            pg._PREPARED.setdefault(conn, set()).add(append.name)
        try:
            value = pg._value(pg._check(answers[2], pg._APPEND_ALONE[False], pg._TUPLES_OK))
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) == pg._LEASE_LOST:
                raise LeaseLost(run_id=self.record.id, owner=self.record.lease_owner) from None
            raise
        new = end[0]
        return Head(new.seq, new.hash, value is not None and int(value) != 0)

    def _again(self) -> None:
        """The creation's outcome is unknown: make it again through ``create_run`` (retried;
        idempotent on the run's id, so it finds the run if the first attempt committed, and
        an end sent with it that committed too is then found by ``Store.append``)."""
        try:
            record, created = self._redo()
        except Exception as exc:
            self._error = exc
            return
        if not created and record.lease_owner not in (self.record.lease_owner, None):
            self._error = LeaseLost(run_id=self.record.id, owner=self.record.lease_owner)


def ahead_row(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The run's row (``RUN_COLUMNS`` and its queue) as ``_create_run_once``'s ``values`` make
    it; the lease's expiry (the server's clock) unknown."""
    return (*values[:4], None, None, *values[4:8], None, 0, None, *values[8:13], None, values[13])


def _encode(params: Sequence[Any]) -> list[bytes | None]:
    from ._postgres import _text

    return [v.encode() if type(v) is str and "\x00" not in v else _text(v) for v in params]


def _answers(generators: Any, pgconn: Any, n: int) -> Any:
    """Flush what was sent, then read ``n`` answers of a pipeline (a statement's, a sync's)."""
    yield from generators.send(pgconn)
    answers = []
    for _ in range(n):
        answers.append((yield from generators.fetch_many(pgconn)))
    return answers


def _end_params(
    store: PostgresStore,
    run_id: str,
    head: Head,
    events: Sequence[NewEvent],
    owner: str,
    projection: dict[str, Any],
) -> tuple[Head, tuple[Any, ...]] | None:
    """The new head and ``wflo_append``'s parameters for an append ``Store.append`` would make
    durably (as the end of a run), or ``None`` for any other (a relaxed marker)."""
    from . import _postgres as pg
    from ._base import RELAXED_MARKERS

    status = projection.get("status")
    finish = bool(projection.get("finish", False))
    release = bool(projection.get("release", False))
    wake_at = projection.get("wake_at")
    output, error = projection.get("output"), projection.get("error")
    if not events or set(projection) - {"status", "finish", "release", "wake_at", "output", "error"}:
        return None
    if not (finish or release or status is not None or wake_at is not None) and all(
        e.type in RELAXED_MARKERS for e in events
    ):
        return None  # a relaxed marker: the usual path
    now = now_iso()
    output_json = None if not finish or error is not None else canonical_json(output)
    error_json = canonical_json(error) if finish and error is not None else None
    notify = finish or status == "waiting"
    new, rows = store._link(run_id, head, events)
    cols = list(zip(*rows, strict=True))
    params = (run_id, head.seq, owner, new.seq, new.hash, now, status, finish, output_json, error_json,
              release, wake_at, "wflo_runs" if notify else None, *[pg._array(c) for c in cols[1:]])  # fmt: skip
    return new, params
