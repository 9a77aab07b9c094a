"""PostgreSQL's direct path: one prepared statement sent straight through libpq.

The store's hot statements (a run's append alone, a new run with its first events, the rows of
``write_rows``) do not go through psycopg's cursor: a cursor object per statement, its adapters
and its prepared-statement bookkeeping cost the client more CPU than the statement's round trip
(issue 20). Each is sent here with ``psycopg.pq`` (libpq) on a connection of the store's pool:

- prepared once per connection under a name of its own (its text's hash), outside psycopg's
  cache, pipelined with its first use (no round trip more); sent unprepared behind a
  transaction pooler; prepared again when the session lost it (``DEALLOCATE ALL``);
- its parameters as text the statement casts (``array_text`` for arrays), bytes in binary;
- its answer read as psycopg would load it (``first_value``, ``first_row``), its errors raised
  as psycopg's (the classes and SQLSTATEs a cursor raises).

``direct`` runs one statement and waits for its answer on the calling thread; ``direct_rows``
pipelines several in one implicit transaction. On the event loop, ``direct_gen`` is the same
exchange as a psycopg generator, driven by ``Exchange`` on the loop's reader and writer (never
a blocking read): ``LoopWriter`` sends an async run's append from its loop's thread and awaits
its commit there (``Store.loop_writer``).

The statements' SQL, and which commits may skip the wait for the disk ("Commit modes"), are the
store's, in ``_postgres``. psycopg is imported lazily, as there: ``wflo.store`` imports without it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import selectors
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import LeaseLost
from ._base import RELAXED_MARKERS
from ._chain import canonical_json
from ._offload import LoopWaiter
from ._records import RUN_COLUMNS, Head, NewEvent, RunRecord, now_iso

if TYPE_CHECKING:
    from ._postgres import PostgresStore

LEASE_LOST = "WF001"  # the SQLSTATE of wflo_fence and wflo_append for a lost lease (``LeaseLost``)
_NO_SUCH_STATEMENT = b"26000"  # invalid_sql_statement_name: a prepared statement is gone
_ALREADY_PREPARED = b"42P05"  # duplicate_prepared_statement


class Statement:
    """A statement ``direct`` sends: its text with ``$n`` placeholders and the name it is
    prepared under on each connection (from its text: one text, one name)."""

    __slots__ = ("name", "query", "sql")

    def __init__(self, sql: str) -> None:
        parts = sql.split("%s")
        text = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        self.sql = sql
        self.query = text.encode()
        self.name = b"wflo_" + hashlib.sha256(self.query).hexdigest()[:20].encode()


class Values(list):  # type: ignore[type-arg]
    """A statement's parameters already as ``direct`` sends them (``bytes`` of PostgreSQL text,
    ``None`` for NULL, no NUL byte in any): sent as they are (``direct``, ``direct_gen``), not
    encoded one by one. The hot statements' parameters have fixed types, so their builder
    (``_postgres._step_values``) encodes each without asking its type: a step's fourteen
    parameters in about a third of the generic encoding's time (issue 20)."""

    __slots__ = ()


# The statements ``direct`` prepared on each connection (gone with the connection).
PREPARED: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()

LEASE_COLUMN = RUN_COLUMNS.split(", ").index("lease_expires_at")  # in a run's row, as the creates answer it

_SQLSTATE = ord("C")  # PG_DIAG_SQLSTATE
# libpq's codes (``psycopg.pq``'s enums compare equal to them; the ints cost no attribute look-ups).
_CONNECTION_OK = 0  # pq.ConnStatus.OK
_IDLE = 0  # pq.TransactionStatus.IDLE
_PIPELINE_OFF = 0  # pq.PipelineStatus.OFF
_COMMAND_OK = 1  # pq.ExecStatus.COMMAND_OK
_TUPLES_OK = 2  # pq.ExecStatus.TUPLES_OK
_PIPELINE_SYNC = 10  # pq.ExecStatus.PIPELINE_SYNC
_FATAL_ERROR = 7  # pq.ExecStatus.FATAL_ERROR


def alone(conn: Any) -> bool:
    """Whether a statement on ``conn`` may go straight to libpq (``direct``): outside any
    transaction and pipeline, with text in UTF-8 (as ``direct`` encodes it)."""
    pgconn = conn.pgconn
    return bool(
        pgconn.transaction_status == _IDLE
        and pgconn.pipeline_status == _PIPELINE_OFF
        and pgconn.parameter_status(b"client_encoding") == b"UTF8"
    )


def direct(store: PostgresStore, conn: Any, stmt: Statement, params: Sequence[Any]) -> Any:
    """Run ``stmt`` alone on an idle ``conn`` (see ``alone``), in one round trip, and
    return its answer (a libpq result: see ``first_value``, ``first_row``). The path of the hot
    append and of a run's creation (issue 20): psycopg's cursor (a cursor object per
    statement, its adapters, its prepared-statement bookkeeping) cost the client more CPU
    than the statement's round trip.

    The statement is prepared once per connection under a name of its own (its text's
    hash), outside psycopg's cache: by ``PostgresStore._warm``, or at its first use,
    pipelined with that use (no round trip more). Behind a transaction pooler it is sent
    unprepared (as psycopg would: see ``PostgresStore.__init__``). A statement the session
    lost (``DEALLOCATE ALL``, ``DISCARD ALL``) is refused by the server before anything
    runs: it is prepared and sent again. Errors are psycopg's (the classes and SQLSTATEs a
    cursor raises); a connection lost on the way raises ``OperationalError`` and the
    store's ``_connection`` discards it; an interrupt is handled by psycopg's ``wait`` (the
    query is cancelled). ``params`` as ``Values`` are sent as they are (already encoded)."""
    psycopg = store._psycopg
    if type(params) is Values:
        values: Sequence[bytes | None] = params
    else:  # text and NULL inline, numbers and booleans through ``_text``
        values = [
            v.encode() if type(v) is str and "\x00" not in v else None if v is None else b"%d" % v if type(v) is int
            else _text(v) for v in params
        ]  # fmt: skip
    pgconn = conn.pgconn
    with conn.lock:
        if pgconn.status != _CONNECTION_OK:
            raise psycopg.OperationalError("the connection is closed")
        if store.pooler == "transaction":
            pgconn.send_query_params(stmt.query, values)
            return _check(conn.wait(psycopg.generators.execute(pgconn)), stmt, _TUPLES_OK)
        prepared = PREPARED.get(conn)
        if prepared is None:
            prepared = PREPARED[conn] = set()
        if stmt.name in prepared:
            pgconn.send_query_prepared(stmt.name, values)
            results = conn.wait(psycopg.generators.execute(pgconn))
            if results and results[-1].status == _TUPLES_OK:  # nearly always: no more questions
                return results[-1]
            if not (results and results[-1].error_field(_SQLSTATE) == _NO_SUCH_STATEMENT):
                return _check(results, stmt, _TUPLES_OK)
            prepared.discard(stmt.name)  # the session lost it: nothing ran
        return _prepare_and_run(store, conn, stmt, values, prepared)


def _prepare_and_run(
    store: PostgresStore, conn: Any, stmt: Statement, values: Sequence[bytes | None], prepared: set[bytes]
) -> Any:
    """Prepare ``stmt`` on ``conn`` and run it, pipelined: one round trip."""
    psycopg = store._psycopg
    pgconn = conn.pgconn
    if not psycopg.Pipeline.is_supported():  # libpq < 14: the preparation on its own first
        prepare(store, conn, stmt, prepared)
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


def prepare(store: PostgresStore, conn: Any, stmt: Statement, prepared: set[bytes]) -> None:
    """Prepare ``stmt`` on ``conn`` (one round trip), or raise why not. One the session
    already holds under its name (the name is its text's hash) counts as prepared."""
    psycopg = store._psycopg
    conn.pgconn.send_prepare(stmt.name, stmt.query)
    results = conn.wait(psycopg.generators.execute(conn.pgconn))
    if not (results and results[-1].error_field(_SQLSTATE) == _ALREADY_PREPARED):
        _check(results, stmt, _COMMAND_OK)
    prepared.add(stmt.name)


def direct_rows(store: PostgresStore, conn: Any, batch: Sequence[tuple[Statement, Sequence[Any]]]) -> None:
    """Run ``batch`` (statements, each with its parameters) on an idle ``conn`` (see
    ``alone``) in one pipeline ended by one sync: one implicit transaction, one round
    trip. A statement that fails rolls back the ones before it and skips the rest.

    As ``direct``: each statement is prepared once per connection under its text's hash,
    in the same pipeline at its first use (behind a transaction pooler: sent unprepared);
    a pipeline refused because the session lost a statement (``DEALLOCATE ALL``) or holds
    one already ran nothing and is sent again; errors are psycopg's; text holding NUL is
    refused before anything is sent. Bytes go as binary parameters (no hex text to build
    and parse). A connection left with answers unread is closed (the pool drops it)."""
    psycopg = store._psycopg
    sent = [(stmt, *_params(params)) for stmt, params in batch]
    pgconn = conn.pgconn
    with conn.lock:
        if pgconn.status != _CONNECTION_OK:
            raise psycopg.OperationalError("the connection is closed")
        unprepared = store.pooler == "transaction"
        prepared = PREPARED.get(conn)
        if prepared is None:
            prepared = PREPARED[conn] = set()
        for _ in range(3):  # at most the two statements to re-prepare, then for real
            made: list[Statement] = []
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


def _check(results: list[Any], stmt: Statement, ok: Any) -> Any:
    """The last of ``results``, or the error it reports (as psycopg raises it)."""
    if results and results[-1].status == ok:  # before the imports: the answer is nearly always this
        return results[-1]
    from psycopg import errors, pq

    if not results:
        raise errors.InterfaceError(f"no result from {stmt.sql[:40]!r}")
    result = results[-1]
    if result.status == pq.ExecStatus.FATAL_ERROR:
        raise errors.error_from_result(result, encoding="utf-8")
    raise errors.InterfaceError(f"unexpected result {pq.ExecStatus(result.status).name} from {stmt.sql[:40]!r}")


def first_value(result: Any) -> bytes | None:
    """The first column of the first row of a statement's answer, as text."""
    value: bytes | None = result.get_value(0, 0)
    return value


# Readers of the column types ``direct``'s statements answer with, by type oid.
_READERS: dict[int, Callable[[bytes], Any]] = {
    25: bytes.decode,  # text
    1043: bytes.decode,  # varchar
    19: bytes.decode,  # name
    20: int,  # bigint
    23: int,  # integer
    21: int,  # smallint
    16: lambda v: v == b"t",  # boolean
}


def new_run_lease(result: Any) -> str | None:
    """The lease's expiry in the answer of a new run's creation (``_CREATE_OWNED``'s one row):
    the one value of it its caller did not write (issue 20: read alone, not as ``first_row``
    reads the twenty columns of its row, NULLs all but this and two constants)."""
    value: bytes | None = result.get_value(0, LEASE_COLUMN)
    return None if value is None else value.decode()


def first_row(result: Any) -> tuple[Any, ...] | None:
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


def _params(params: Sequence[Any]) -> tuple[list[bytes | None], list[int] | None]:
    """A statement's parameters for libpq, with their formats: text as ``direct`` sends it,
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
    answers: list[Any], made: list[Statement], sent: list[tuple[Statement, Any, Any]], prepared: set[bytes]
) -> bool:
    """Whether ``direct_rows``'s pipeline failed only for the session's prepared statements
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


def _rows_checked(answers: list[Any], made: list[Statement], sent: list[tuple[Statement, Any, Any]]) -> None:
    """Raise the first error of ``direct_rows``'s pipeline, as psycopg raises it."""
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


def array_text(values: Sequence[Any]) -> str:
    """``values`` as a PostgreSQL array literal, for a parameter the statement casts
    (``%s::text[]``, ``%s::bigint[]``). Sent as text, the server parses it: psycopg would
    otherwise inspect every element of every list to choose the array's type, a large part of
    the client's work for a short run (issue 20). Every element is quoted, so no text can
    read as NULL, a delimiter or a nested array; ``None`` is NULL."""
    if len(values) == 1:  # a step's append: one event, its six columns each alone
        value = values[0]
        if value is None:
            return "{NULL}"
        text = value if type(value) is str else str(value)
        if '"' not in text and "\\" not in text:
            return '{"' + text + '"}'
        return "{" + _quoted(text) + "}"
    if values and None not in values:
        # Most columns (numbers, times, hashes, types) hold no quote or backslash: quoted
        # all at once, escaping nothing.
        body = '","'.join([v if type(v) is str else str(v) for v in values])
        if '"' not in body and "\\" not in body:
            return '{"' + body + '"}'
    return "{" + ",".join(["NULL" if v is None else _quoted(str(v)) for v in values]) + "}"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ----------------------------------------------------------------- on the event loop
def direct_gen(store: PostgresStore, conn: Any, stmt: Statement, params: Sequence[Any]) -> Any:
    """``direct`` as one psycopg generator (it yields what it waits for on ``conn``'s
    socket, ``psycopg.waiting``'s protocol), to be driven from the event loop
    (:class:`Exchange`): the statement sent on ``conn`` (non-blocking, as psycopg keeps
    every connection), its answer read as the socket becomes ready. The same statements,
    preparation (and re-preparation after ``DEALLOCATE ALL``), unprepared behind a
    transaction pooler, the same errors. The caller owns ``conn`` alone (a pooled
    connection taken for it)."""
    psycopg = store._psycopg
    execute = psycopg.generators.execute
    if type(params) is Values:
        values: Sequence[bytes | None] = params
    else:
        values = [
            v.encode() if type(v) is str and "\x00" not in v else None if v is None else b"%d" % v if type(v) is int
            else _text(v) for v in params
        ]  # fmt: skip
    pgconn = conn.pgconn
    if pgconn.status != _CONNECTION_OK:
        raise psycopg.OperationalError("the connection is closed")
    if store.pooler == "transaction":
        pgconn.send_query_params(stmt.query, values)
        return _check((yield from execute(pgconn)), stmt, _TUPLES_OK)
    prepared = PREPARED.get(conn)
    if prepared is None:
        prepared = PREPARED[conn] = set()
    if stmt.name in prepared:
        pgconn.send_query_prepared(stmt.name, values)
        results = yield from execute(pgconn)
        if results and results[-1].status == _TUPLES_OK:  # nearly always: no more questions
            return results[-1]
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


class Exchange:
    """One libpq exchange on a connection (a psycopg generator, ``direct_gen``), begun at once
    (the statement sent) and driven to its end either from the event loop (:meth:`run`:
    awaited on the loop's reader or writer, never a blocking read) or, when code on the loop's
    own thread cannot wait for the loop (a sync step's append behind it), by a blocking wait
    on the socket (:meth:`finish`). Whichever ends it keeps the outcome; the other takes it.

    On the loop, the socket's reader (or writer) callback advances the generator itself and
    keeps the socket watched while the generator waits for the same thing; the exchange's end
    resumes the awaiting task in that callback (a ``LoopWaiter``): one turn of the loop per
    answer, not two (the callback's, then the task's), and no reader removed and added again
    between two waits for the same thing."""

    def __init__(self, gen: Any, pgconn: Any) -> None:
        self._gen = gen
        self._pgconn = pgconn
        self._waiter: LoopWaiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watching = 0  # what the loop watches the socket for (WAIT_R | WAIT_W bits)
        self._fileno = -1  # the socket watched (kept: a connection closed meanwhile has none)
        self._handle: asyncio.Handle | None = None  # the reader ``_watch`` put on the loop's selector itself
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._state = 0
        self._step(None, direct=False)

    def _step(self, ready: int | None, *, direct: bool) -> None:
        """Advance the generator: begin it (``ready`` None), or tell it what is ready."""
        try:
            self._state = next(self._gen) if ready is None else self._gen.send(ready)
        except StopIteration as stop:
            self._end(stop.value, None, direct=direct)
        except OSError as exc:
            self._end(None, _socket_closed(exc), direct=direct)
        except Exception as exc:
            self._end(None, exc, direct=direct)

    def _end(self, value: Any, error: BaseException | None, *, direct: bool) -> None:
        """The outcome kept, the socket no longer watched, the awaiting task (if any) resumed:
        at once when ``direct`` (in a callback of the loop), else in the loop's next turn (from
        code of another task on the loop's thread, :meth:`finish`)."""
        self.done, self.value, self.error = True, value, error
        self._gen = None
        self._unwatch()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if direct:
                waiter.deliver(None, None)
            else:
                waiter.get_loop().call_soon(waiter.deliver, None, None)

    def _watch(self) -> None:
        """Watch the socket for what the generator waits for (readers and writers changed only
        where that changed). An answer awaited alone (the usual case) on asyncio's own selector
        loop is registered with the loop's selector directly (``_selector_of``)."""
        READY_R, READY_W, WAIT_R, WAIT_W = _waits()
        loop = self._loop
        assert loop is not None
        have = self._watching
        if not have:
            self._fileno = self._pgconn.socket
        fileno = self._fileno
        want = self._state & (WAIT_R | WAIT_W)
        if want == have:  # waiting for the same again: nothing to change
            return
        if not have and want == WAIT_R:
            selector = _selector_of(loop)
            if selector is not None:
                handle = asyncio.Handle(self._ready, (READY_R,), loop, None)
                try:
                    selector.register(fileno, _EVENT_READ, (handle, None))
                except KeyError:  # watched already (by anyone): asyncio's own way below
                    pass
                else:
                    self._handle = handle
                    self._watching = want
                    return
        self._handle = None  # what follows goes through asyncio's own methods
        if (want ^ have) & WAIT_R:
            if want & WAIT_R:
                loop.add_reader(fileno, self._ready, READY_R)
            else:
                loop.remove_reader(fileno)
        if (want ^ have) & WAIT_W:
            if want & WAIT_W:
                loop.add_writer(fileno, self._ready, READY_W)
            else:
                loop.remove_writer(fileno)
        self._watching = want

    def _unwatch(self) -> None:
        _, _, WAIT_R, WAIT_W = _waits()
        have, self._watching = self._watching, 0
        loop = self._loop
        if not have or loop is None:
            return
        fileno = self._fileno
        handle, self._handle = self._handle, None
        if handle is not None:  # registered by ``_watch`` on the selector, as ``remove_reader`` undoes it
            handle.cancel()
            selector = _selector_of(loop)
            if selector is not None:
                try:  # noqa: SIM105 (``suppress`` is a context manager more per answer)
                    selector.unregister(fileno)
                except KeyError:  # not registered any more: nothing to undo
                    pass
                return
        if have & WAIT_R:
            loop.remove_reader(fileno)
        if have & WAIT_W:
            loop.remove_writer(fileno)

    def _ready(self, got: int) -> None:
        """(A callback of the loop.) The socket is ready for ``got``: on with the exchange."""
        got &= self._state
        if self.done or not got:  # ended meanwhile (``finish``), or no longer waited for
            return
        self._step(got, direct=True)
        if not self.done:
            self._watch()

    async def run(self) -> None:
        """Drive the exchange to its end from the event loop (as ``psycopg.waiting.wait_async``,
        without its timer). Run to its end even if the awaiting task is cancelled meanwhile (a
        statement sent must have its answer read, and a commit made must be known, as
        ``Store.off_loop`` runs an operation to its end): the cancellation is then raised at the
        task's next await."""
        if self.done:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        cancelled = False
        try:
            self._watch()
            while not self.done:
                self._waiter = LoopWaiter(loop)
                try:
                    await self._waiter
                except asyncio.CancelledError:
                    cancelled = True  # not cut off half-way: raised once the answer is read
                finally:
                    self._waiter = None
        finally:
            self._unwatch()
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
            self._end(None, _socket_closed(exc), direct=False)
        except Exception as exc:
            self._end(None, exc, direct=False)
        except BaseException:
            self._pgconn.finish()
            self._end(None, OperationalError("the connection was closed: interrupted while reading"), direct=False)
            raise
        else:
            self._end(value, None, direct=False)


_WAITS: tuple[Any, Any, Any, Any] | None = None


def _waits() -> tuple[Any, Any, Any, Any]:
    """psycopg's ``READY_R, READY_W, WAIT_R, WAIT_W`` (imported on first use, as psycopg is)."""
    global _WAITS
    if _WAITS is None:
        from psycopg.waiting import READY_R, READY_W, WAIT_R, WAIT_W

        _WAITS = (READY_R, READY_W, WAIT_R, WAIT_W)
    return _WAITS


_EVENT_READ = selectors.EVENT_READ
_SELECTOR_LOOPS: dict[type, bool] = {}


def _selector_of(loop: Any) -> selectors.BaseSelector | None:
    """The selector of ``loop`` if it is asyncio's own selector loop (its reader methods and
    its event dispatch not overridden), else ``None``: the exchange then watches its socket
    through ``add_reader``.

    ``add_reader`` and ``remove_reader`` cost ~51 K instructions a pair (issue 20: two pairs
    per async empty run, a sixth of its client's work in asyncio's Python): each checks the
    descriptor against the loop's transports and asks the selector for a key it does not hold,
    four ``KeyError`` raised and caught with their messages formatted. For a socket no
    transport owns (libpq's), they come down to what is done here instead (~18 K a pair): the
    selector's ``register`` with ``(reader handle, None)`` as the key's data, which the loop's
    ``_process_events`` reads as ``(reader, writer)``, and its ``unregister``, the handle
    cancelled. Any other loop (uvloop, a subclass overriding them, one given its own ``add_reader``), or a
    closed one: ``None``."""
    kind = type(loop)
    fast = _SELECTOR_LOOPS.get(kind)
    if fast is None:
        base = asyncio.selector_events.BaseSelectorEventLoop
        # The key's data as ``(reader, writer)`` is read from CPython 3.11 to 3.13's
        # ``_process_events``; a later asyncio, unread, gets the public methods (a data layout
        # changed under us would leave the answer unread: a hang, not a slower run).
        fast = _SELECTOR_LOOPS[kind] = sys.version_info < (3, 14) and issubclass(kind, base) and all(
            getattr(kind, name) is getattr(base, name)
            for name in ("add_reader", "_add_reader", "remove_reader", "_remove_reader", "add_writer", "_add_writer",
                         "remove_writer", "_remove_writer", "_process_events")
        )  # fmt: skip
    if not fast:
        return None
    own = loop.__dict__
    if "add_reader" in own or "remove_reader" in own:  # set on this loop (a test's hook): called
        return None
    selector: selectors.BaseSelector | None = getattr(loop, "_selector", None)
    return selector


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


# An append's statement (durable, relaxed) and its parameters, from the store (``_postgres``):
# ``statement(run_id, head, new, rows, owner, now)`` for an append of ``rows`` (``_link``'s) that
# changes nothing else of the run.
AppendStatement = Callable[
    [str, Head, Head, list[tuple[Any, ...]], str | None, str], tuple[tuple[Statement, Statement], Sequence[Any]]
]


# ``_postgres`` (which imports this module), imported at the first use and kept: an import
# statement in a function costs ~5 K instructions per call (issue 20: an async run's create, its
# answer and its end each had one).
_PG: Any = None


def _load_pg() -> Any:
    global _PG
    from . import _postgres

    _PG = _postgres
    return _postgres


class LoopWriter:
    """A run's append from its event loop on one pooled connection (``PostgresStore.loop_writer``),
    sent as the store's statement for it (``statement``: a step's, or ``wflo_append``; durable,
    and relaxed: see "Commit modes" in ``_postgres``)."""

    def __init__(
        self, store: PostgresStore, conn: Any, executor: Any, key: Any, token: Any, statement: AppendStatement
    ) -> None:
        self._store = store
        self._statement = statement
        self._conn = conn
        self._executor = executor
        self._key = key
        self._token = token

    def _send(self, statement: Statement, params: Sequence[Any]) -> tuple[Any, Exchange]:
        """The writer's one statement begun on its connection (taken from the writer: given back
        to the pool with the answer, or here at once when it could not be begun)."""
        store = self._store
        conn = self._conn
        if conn is None or not conn.lock.acquire(blocking=False):  # never: the connection is ours alone
            raise store._psycopg.InterfaceError("the connection is in use")
        self._conn = None
        try:
            return conn, Exchange(store._direct_gen(conn, statement, params), conn.pgconn)
        except BaseException:
            conn.lock.release()
            store._pool.put(conn, broken=store._conn_broken(conn))
            raise

    def append(self, run_id: str, head: Head, events: Sequence[NewEvent], *, owner: str | None) -> LoopAppend:
        """``Store.append(run_id, head, events, owner=owner)``: one statement, prepared,
        committed as ``append`` commits it (durable; relaxed only for a marker alone), sent now;
        await the result for the new head (or ``LeaseLost``, psycopg's errors), or call its
        ``finish()`` to wait for it on this thread. A lost connection is dropped and the append
        made again on a store thread, where ``append`` finds out whether the first one committed.
        One append per writer: its connection goes back to the pool with the answer."""
        store = self._store
        now = now_iso()
        # A step's event stops at the first question.
        relaxed = bool(events) and events[0].type in RELAXED_MARKERS and all(e.type in RELAXED_MARKERS for e in events)
        new, rows = store._link(run_id, head, events)
        statements, params = self._statement(run_id, head, new, rows, owner, now)
        conn, exchange = self._send(statements[relaxed], params)
        return LoopAppend(store, conn, exchange, functools.partial(store.append, run_id, head, events, owner=owner),
                          run_id, owner, new)  # fmt: skip

    def append_end(
        self, run_id: str, head: Head, events: Sequence[NewEvent], *, owner: str | None, status: str, output: Any,
        output_json: str | None = None,
    ) -> LoopAppend:  # fmt: skip
        """A run's final append: ``Store.append(run_id, head, events, owner=owner, status=status,
        output=output, finish=True, output_json=output_json)`` with no ops, from the loop (issue 20: an async run's end
        without a hand-off to a store thread). The sync path's statement for a run's end
        (``_END`` on a schema with m025, else ``wflo_append``: its status and output, the lease
        let go, ``wflo_runs`` notified), fenced as any append and always durable (a run's end is
        never relaxed). Otherwise as :meth:`append`:
        sent now, one per writer; a lost connection makes it again through ``Store.append``,
        which finds out whether the first one committed."""
        store = self._store
        now = now_iso()
        new, rows = store._link(run_id, head, events)
        statements, params = (_PG or _load_pg())._append_statement(
            run_id, head, new, rows, owner=owner, now=now, status=status, finish=True,
            output_json=canonical_json(output) if output_json is None else output_json, error_json=None,
            release=False, wake_at=None, notify=True, lean=store._lean(),
        )  # fmt: skip
        conn, exchange = self._send(statements[False], params)
        redo = functools.partial(store.append, run_id, head, events, owner=owner, status=status, output=output,
                                 finish=True, output_json=output_json)  # fmt: skip
        return LoopAppend(store, conn, exchange, redo, run_id, owner, new)

    def create_run(
        self, *, run_id: str, workflow: str, input: Any, options: dict[str, Any], tenant: str | None, owner: str,
        lease_seconds: float, queue: str | None = None, priority: int = 0, partition_key: str | None = None,
        input_json: str | None = None,
    ) -> LoopCreate:  # fmt: skip
        """``Store.create_run(...)`` of a top-level run its caller executes now (``owner``, a
        lease), from the loop (issue 20: an async run's start without a hand-off to a store
        thread): the same statement as the direct path (the run and its ``run.created`` and
        ``run.started`` events, relaxed as that start is: see "Commit modes" in ``_postgres``),
        idempotent on ``run_id``. Await it for ``(record, created)``. A lost connection makes
        it again through ``Store.create_run``; one statement per writer, as :meth:`append`."""
        pg = _PG or _load_pg()
        store = self._store
        values, rows = store._new_run(run_id, workflow, input, input_json, options, None, tenant, owner, None, queue,
                                      priority, partition_key, now_iso())  # fmt: skip
        conn, exchange = self._send(pg._CREATE_ALONE[True], pg._create_params(values, rows, lease_seconds))
        redo = functools.partial(
            store.create_run, run_id=run_id, workflow=workflow, input=input, options=options, tenant=tenant,
            owner=owner, lease_seconds=lease_seconds, queue=queue, priority=priority, partition_key=partition_key,
            input_json=input_json,
        )  # fmt: skip
        return LoopCreate(store, conn, exchange, redo, run_id, owner, Head(values[8], values[9]), values)

    def close(self) -> None:
        """Give the connection back to the pool (dropped if broken) and the place in the order."""
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                self._store._pool.put(conn, broken=self._store._conn_broken(conn))
        finally:
            self._executor.give_back(self._key, self._token)


class LoopAppend:
    """An append sent from the event loop (``LoopWriter.append``), its answer not read yet.

    ``await`` it on the loop (the loop never blocked), or :meth:`finish` it on the loop's thread
    where code cannot give way to the loop (a sync call's append behind it, see
    ``RunContext.append``): the same outcome either way, computed once."""

    def __init__(self, store: PostgresStore, conn: Any, exchange: Exchange, redo: Callable[[], Head],
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
            self._redo_needed = lost and getattr(error, "sqlstate", None) != LEASE_LOST
            store._pool.put(conn, broken=broken or self._redo_needed)
        return self._redo_needed

    def _head(self) -> Head:
        error = self._exchange.error
        if error is not None:
            if getattr(error, "sqlstate", None) == LEASE_LOST:
                raise LeaseLost(run_id=self._run_id, owner=self._owner) from None
            raise error
        value = first_value(self._exchange.value)
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


class LoopCreate(LoopAppend):
    """A run's creation sent from the event loop (``LoopWriter.create_run``): awaited, it gives
    ``(record, created)`` as ``Store.create_run`` does (the stored run when the id existed)."""

    def __init__(self, store: PostgresStore, conn: Any, exchange: Exchange, redo: Callable[[], Any],
                 run_id: str, owner: str | None, new: Head, values: tuple[Any, ...]) -> None:  # fmt: skip
        super().__init__(store, conn, exchange, redo, run_id, owner, new)
        self._values = values

    async def wait(self) -> Any:
        await self._exchange.run()
        if self._lost():
            return await self._store.off_loop(self._again)
        row = self._created()
        if row is None:  # created by another process at this very moment: read it there
            return await self._store.off_loop(self._existing)
        return row

    def finish(self) -> Any:
        self._exchange.finish()
        if self._lost():
            return self._again()
        return self._created() or self._existing()

    def _created(self) -> tuple[RunRecord, bool] | None:
        error = self._exchange.error
        if error is not None:
            raise error
        result = self._exchange.value  # ``_CREATE_OWNED``'s: a new run's row, else none
        if not result.ntuples:
            return None
        return RunRecord.from_row((_PG or _load_pg())._written(self._values, new_run_lease(result))), True

    def _existing(self) -> tuple[RunRecord, bool]:
        return self._store.get_run(self._run_id), False
