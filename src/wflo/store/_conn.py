"""The connection layer every store shares: a bounded pool, transactions, retries.

A thread takes a connection from the pool for one transaction or one read and gives it back
(see ``_pool``); a read made inside a write transaction reuses the transaction's connection.
A lost connection (server restart, ``pg_terminate_backend``) is dropped and the operation
run again; a damaged database file becomes one clear error (``_translate_error``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar, cast

from .._errors import StoreError
from ._offload import LoopWaiter, OrderedExecutor
from ._pool import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, BoundedPool
from ._stream import DEFAULT_BATCH, RowStream

T = TypeVar("T")

# This process's id, kept across forks (``os.register_at_fork``): the pool is checked against it
# on every store call, and ``os.getpid()`` is a system call (glibc keeps no cache of it), about
# 0.3 µs of a PostgreSQL step's client CPU on a small VM (issue 20).
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def process_id() -> int:
    """``os.getpid()`` without its system call (kept up to date in a forked child)."""
    return _pid


class Connections(abc.ABC):
    """Pooled connections, transactions and retries; backends supply the dialect hooks."""

    url: str

    def __init__(
        self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, pool_timeout: float = DEFAULT_POOL_TIMEOUT
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout
        self._local = threading.local()
        self._pool: Any = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        self._sql_cache: dict[str, str] = {}
        self._offload: OrderedExecutor | None = None

    @abc.abstractmethod
    def _connect(self) -> Any:
        """A new DB-API connection in autocommit mode."""

    @abc.abstractmethod
    def _begin(self, cur: Any) -> None:
        """Begin a transaction that may write."""

    def _begin_relaxed(self, cur: Any) -> None:
        """Begin a write transaction whose commit need not wait for the disk (see
        ``PostgresStore``: commit modes); by default the same as ``_begin``."""
        self._begin(cur)

    def _is_disconnect(self, error: BaseException) -> bool:
        """True when ``error`` means the connection is gone and the operation may be retried."""
        return False

    placeholder = "?"
    for_update = ""
    """Suffix that locks selected rows until commit (PostgreSQL); SQLite's write transaction
    already holds the whole database."""

    def _translate_error(self, error: BaseException) -> BaseException | None:
        """A clearer error for ``error`` (a damaged database file), or ``None``."""
        return None

    def _conn_broken(self, conn: Any) -> bool:
        """True when ``conn`` can no longer be used (it is then closed, not pooled)."""
        return False

    def _make_pool(self) -> Any:
        """The pool connections come from (``get``/``put``/``discard_idle``/``close``)."""
        return BoundedPool(
            self._connect, size=self.pool_size, timeout=self.pool_timeout, url=self.url, close=lambda c: c.close()
        )

    # ----------------------------------------------------------------- connections
    def _get_pool(self) -> Any:
        pool = self._pool
        if pool is None or self._pool_pid != _pid:
            with self._pool_lock:
                # After a fork the parent's connections are not ours to use: a new pool.
                if self._pool is None or self._pool_pid != _pid:
                    self._pool = self._make_pool()
                    self._pool_pid = _pid
                pool = self._pool
        return pool

    def _connection(self) -> contextlib.AbstractContextManager[Any]:
        """A pooled connection for one transaction or read, returned to the pool afterwards.

        Re-entrant per thread: a read made inside a write transaction (a ``StoreOp`` asking
        the store something) uses the transaction's connection, so it sees the transaction's
        own writes and a thread never waits on the pool while holding a connection.
        """
        held = getattr(self._local, "held", None)
        if held is not None:
            return contextlib.nullcontext(held)
        return _Taken(self)

    # ----------------------------------------------------------------- async callers
    offload_threads = 0
    """Threads that run ``off_loop`` operations (0: as many as the pool has connections)."""

    async def off_loop(self, fn: Callable[..., T], /, *args: Any, key: Any = None, here: bool = False) -> T:
        """Await ``fn(*args)``, a blocking operation on this store, run on the store's threads.

        For async code: the event loop goes on running other coroutines while the store
        works. ``fn`` runs in a copy of the caller's context (its run, its call path, its
        runtime). Operations with the same ``key`` (a run id) run in the order they were
        submitted, one at a time (see ``_offload``). Once submitted, the operation runs to its
        end even if the awaiting task is cancelled meanwhile; the cancellation is then raised at
        the task's next await.

        ``here``: ``fn`` needs no store and does not block. When nothing of ``key`` is queued or
        running it runs at once on the caller's thread (no hand-off to a store thread and back);
        the caller still gives way to the loop and is woken through the same callbacks as after
        a store thread's run, so the run's tasks resume in the order of their operations.
        """
        executor = self._offload or self._offloader()
        job = functools.partial(contextvars.copy_context().run, fn, *args)
        # Woken in the turn of the loop the job's end arrives in (a ``LoopWaiter``, one callback on
        # the loop queued by the executor as it lets the key go: see ``OrderedExecutor.post``),
        # not one turn later as an ``asyncio.wrap_future``'s or a loop future's caller is.
        # Awaited without ``asyncio.shield`` (its own future and an extra turn of the loop): a
        # cancellation cancels only the waiter, never the job (see ``_cancelled``).
        loop = asyncio.get_running_loop()
        waiter: list[LoopWaiter] = [LoopWaiter(loop)]
        outcome: list[tuple[Any, BaseException | None]] = []
        executor.post(key, job, functools.partial(_wake, loop, waiter, outcome), here=here, wake_locked=True)
        try:
            return await waiter[0]  # type: ignore[no-any-return]  # (no ``cast``: a call on every step)
        except asyncio.CancelledError:
            # A store operation is not cut off half-way (a commit that may or may not have
            # happened, a reservation with no settlement): it runs to its end, and the caller's
            # cancellation is delivered at its next await instead.
            task = asyncio.current_task()
            if task is None:
                raise
            try:
                return cast(T, await _cancelled(loop, outcome, waiter))
            finally:
                task.uncancel()
                task.cancel()

    def run_here(self, key: Any, fn: Callable[..., T], /, *args: Any) -> tuple[bool, T | None]:
        """``(True, fn(*args))``, run on this thread at once, in ``key``'s place in the order of
        :meth:`off_loop` operations, when nothing of ``key`` is queued or running on the
        store's threads; ``(False, None)`` otherwise (nothing run). For ``fn`` that needs no
        store and does not block (as ``off_loop(..., here=True)``), when its caller need not
        give way to the loop: no future, no turn of the loop. Jobs of ``key`` submitted
        meanwhile (by other threads) wait for it."""
        executor = self._offload or self._offloader()
        token = executor.take(key)
        if token is None:
            return False, None
        try:
            return True, fn(*args)
        finally:
            executor.give_back(key, token)

    def loop_writer(self, key: Any) -> Any:
        """A writer that appends to a run's journal from the event loop's own thread, holding
        ``key``'s place in the order of ``off_loop`` operations until it is closed; ``None``
        when this store has none or cannot give one at once (the caller then writes through
        :meth:`off_loop`, as before).

        The writer (PostgreSQL's, when a pooled connection is idle and nothing of ``key`` is
        queued or running on the store's threads): ``await writer.append(run_id, head, events,
        owner=...)`` writes as :meth:`append` does with no ops and no projection change (fenced,
        committed as ``append`` commits, ``LeaseLost`` likewise) without blocking the loop and
        without a hand-off to a store thread (one append per writer); the append is sent at the
        call, and its ``finish()`` waits for its answer on the calling thread instead (code on
        the loop's thread that cannot await: the awaiting task then takes that outcome);
        ``writer.close()`` gives the connection and the place back. Here (SQLite): ``None``."""
        return None

    def _offloader(self) -> OrderedExecutor:
        """The executor of :meth:`off_loop` (made on first use)."""
        executor = self._offload
        if executor is None:
            with self._pool_lock:
                if self._offload is None:
                    self._offload = OrderedExecutor(type(self).__name__, self.offload_threads or self.pool_size)
                executor = self._offload
        return executor

    def close(self) -> None:
        """Close every pooled connection (a later call opens a new pool)."""
        if self._offload is not None:
            self._offload.close()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        self._local = threading.local()

    def _sql(self, sql: str) -> str:
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = sql if self.placeholder == "?" else sql.replace("?", self.placeholder)
            self._sql_cache[sql] = cached
        return cached

    def _retrying(self, fn: Callable[[], T], attempts: int = 5) -> T:
        """Run ``fn``; on a lost connection reconnect and try again (with backoff)."""
        delay = 0.05
        attempt = 0
        while True:  # not ``for attempt in range(attempts)``: its iterator, on every store call
            try:
                return fn()
            except Exception as exc:
                better = self._translate_error(exc)
                if better is not None:
                    raise better from None
                if not self._is_disconnect(exc) or attempt >= attempts - 1:
                    raise
                # The server went away: the idle connections are as dead as this one.
                with suppress(Exception):
                    self._get_pool().discard_idle()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            attempt += 1

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """This thread's write transaction, refused inside another one of this store.

        A nested write cannot be a transaction of its own: on SQLite its ``BEGIN`` fails, and on
        PostgreSQL it would commit the outer transaction's work early (its ``BEGIN`` is only a
        warning there), before the outer one decided. Both stores refuse it the same way."""
        if getattr(self._local, "writing", False):
            raise StoreError(
                "a store write was started inside another write transaction on the same thread; "
                "nested write transactions are not supported: do the inner writes with the outer "
                "transaction's cursor"
            )
        self._local.writing = True
        try:
            yield
        finally:
            self._local.writing = False

    @contextmanager
    def _tx(self, *, relaxed: bool = False) -> Iterator[Any]:
        """A write transaction; ``relaxed``: one that may commit without waiting for the disk."""
        with self._writing(), self._connection() as conn:
            cur = conn.cursor()
            if relaxed:
                self._begin_relaxed(cur)
            else:
                self._begin(cur)
            try:
                yield cur
            except BaseException:
                with suppress(Exception):
                    cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def go() -> list[tuple[Any, ...]]:
            with self._connection() as conn:
                cur = conn.cursor()
                try:
                    cur.execute(self._sql(sql), tuple(params))
                    return list(cur.fetchall())
                finally:
                    cur.close()

        return self._retrying(go)

    def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self._fetchall(sql, params)
        return rows[0] if rows else None

    def write(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(cursor)`` in one write transaction (retried whole on a lost connection)."""

        def go() -> T:
            with self._tx() as cur:
                return fn(cur)

        return self._retrying(go)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (``?`` placeholders on every backend).

        Inside :meth:`read_ahead`, a read the claim already answered (the same text and
        parameters) is answered from there, once."""
        ahead: _ReadAhead | None = getattr(self._local, "ahead", None)
        if ahead is not None:
            rows = ahead.answers.pop((sql, tuple(params)), None)
            if rows is not None:
                return rows
        return self._fetchall(sql, params)

    @contextmanager
    def read_ahead(self, reads: Sequence[tuple[str, Sequence[Any]]]) -> Iterator[None]:
        """Inside, on this thread: a :meth:`claim` that takes its run also sends ``reads``
        (``(sql, params)``, read after the claim, in its transaction); a :meth:`read` of one
        of them is then answered from there, once, instead of asking the store again.

        What a caller reads right after it claimed a run (a woken run's journal) thus costs
        no round trip of its own on PostgreSQL: it goes with the claim's. Elsewhere (SQLite,
        whose claim holds the write lock) nothing is sent ahead. Answers not used are dropped
        on leaving, so none is ever read later than right after its claim."""
        self._local.ahead = _ReadAhead(reads)
        try:
            yield
        finally:
            self._local.ahead = None

    def read_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of a read-only query, or ``None``."""
        return self._fetchone(sql, params)

    def stream(self, sql: str, params: Sequence[Any] = (), *, batch: int = DEFAULT_BATCH) -> RowStream:
        """The rows of a read-only query as they are consumed, ``batch`` at a time, all from
        one snapshot (for results too large to hold: :meth:`read` returns every row at once).

        Iterate it for rows, or its ``batches()`` for lists of rows; close it (or open it in a
        ``with`` block) when leaving early. It holds one pooled connection and one read
        transaction until it ends: SQLite reads one snapshot while writers go on (WAL);
        PostgreSQL fetches from a server-side cursor in a ``READ ONLY`` transaction. Opening
        is retried on a lost connection; a connection lost mid-stream raises
        ``StoreUnavailableError`` (continue from the last key read with a new stream). See ``wflo.store._stream``.
        """
        return RowStream(self, sql, params, batch)

    def _display_url(self) -> str:
        """The store's URL as error messages show it (without a password)."""
        return self.url

    def _open_stream(self, conn: Any, sql: str, params: tuple[Any, ...], *, own: bool) -> Any:
        """A cursor on ``conn`` that has run ``sql``; ``own``: in a read transaction of its own."""
        cur = conn.cursor()
        try:
            if own:
                cur.execute("BEGIN")  # deferred: the snapshot is taken by the query itself
            cur.execute(sql, params)
        except BaseException:
            cur.close()
            raise
        return cur

    def _end_stream(self, conn: Any, cur: Any) -> None:
        """Close a stream's cursor (if any) and end the read transaction it owned."""
        with suppress(Exception):
            if cur is not None:
                cur.close()
        with suppress(Exception):
            end = conn.cursor()
            try:
                end.execute("ROLLBACK")  # read-only: nothing to keep, whatever was asked
            finally:
                end.close()

    def execute(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement on a transaction's cursor (for ``StoreOp`` writers)."""
        cur.execute(self._sql(sql), tuple(params))
        return cur

    def _execute_prepared(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """:meth:`execute` for a statement on a path that must be quick every time (a woken
        run's claim): prepared on the connection where the server allows it (PostgreSQL), so
        it is parsed and planned once per connection, not each time it is sent."""
        return self.execute(cur, sql, params)


class _ReadAhead:
    """What :meth:`Connections.read_ahead` asked to send with a claim, and the answers kept."""

    def __init__(self, reads: Sequence[tuple[str, Sequence[Any]]]) -> None:
        self.reads = [(sql, tuple(params)) for sql, params in reads]
        self.answers: dict[tuple[str, tuple[Any, ...]], list[tuple[Any, ...]]] = {}


def _wake(
    loop: asyncio.AbstractEventLoop,
    waiter: list[LoopWaiter],
    outcome: list[tuple[Any, BaseException | None]],
    value: Any,
    error: BaseException | None,
    here: bool,
) -> Callable[[], Any] | None:
    """``off_loop``'s job ended (on the thread that ran it, under the executor's lock): its
    outcome kept, its caller's wake-up queued on the loop. From a store thread, the system call
    that wakes the loop (its wake-up pipe) is returned, for the thread to make once the lock is
    let go (see ``OrderedExecutor.post``): a selector loop's ``call_soon_threadsafe`` in two
    halves (the queueing under the lock, the write after it); another loop's whole."""
    outcome.append((value, error))
    if here:
        loop.call_soon(_woken, waiter, outcome)
        return None
    if loop.is_closed():
        return None  # nobody awaits the job any more
    if _splits_wake(type(loop)):
        loop._call_soon(_woken, (waiter, outcome), None)  # type: ignore[attr-defined]
        return loop._write_to_self  # type: ignore[attr-defined,no-any-return]
    with suppress(RuntimeError):  # closed meanwhile: nobody awaits the job any more
        loop.call_soon_threadsafe(_woken, waiter, outcome)
    return None


_SPLIT_WAKE: dict[type, bool] = {}


def _splits_wake(cls: type) -> bool:
    """Whether a loop of class ``cls`` has the two private halves of its
    ``call_soon_threadsafe`` as CPython's own loops have had them since 3.7 (``_call_soon(callback,
    args, context)``, then ``_write_to_self()``): checked once per class, by signature, so that
    another loop or a later Python whose internals differ takes the public call instead of
    failing in a store thread (where a lost wake-up would leave its task waiting for ever)."""
    known = _SPLIT_WAKE.get(cls)
    if known is None:
        import inspect

        try:
            params = list(inspect.signature(cls._call_soon).parameters)  # type: ignore[attr-defined]
            known = (
                issubclass(cls, asyncio.BaseEventLoop)
                and params == ["self", "callback", "args", "context"]
                and callable(getattr(cls, "_write_to_self", None))
                and not inspect.signature(cls._write_to_self).parameters.keys() - {"self"}  # type: ignore[attr-defined]
            )
        except (AttributeError, TypeError, ValueError):
            known = False
        _SPLIT_WAKE[cls] = known
    return known


def _woken(waiter: list[LoopWaiter], outcome: list[tuple[Any, BaseException | None]]) -> None:
    """On the loop: the job's outcome to the awaiting task, which resumes now (``LoopWaiter``)."""
    value, error = outcome[0]
    waiter[0].deliver(value, error)


async def _cancelled(
    loop: asyncio.AbstractEventLoop, outcome: list[tuple[Any, BaseException | None]], waiter: list[LoopWaiter]
) -> Any:
    """The outcome of ``off_loop``'s job once its caller was cancelled: the job runs to its end.

    The cancellation cancelled the awaited loop future (``waiter[0]``), not the job: while the
    job runs, a fresh future takes its place (``_woken`` reads ``waiter[0]`` when it runs on
    the loop, and it runs only once the job has ended); once the job has ended, its outcome is
    read from ``outcome`` itself."""
    while True:
        future = waiter[0]
        if not future.cancelled():  # the job had ended (its outcome is there) as the task was cancelled
            return await future
        if outcome:
            value, error = outcome[0]
            if error is not None:
                raise error
            return value
        waiter[0] = LoopWaiter(loop)
        try:
            return await waiter[0]
        except asyncio.CancelledError:
            continue  # cancelled again while the job runs: it still runs to its end


class _Taken:
    """``Connections._connection``'s connection taken from the pool: this thread's ``held``
    until it goes back, dropped when the block it served raised a lost connection or left it
    broken. A class, not a ``contextmanager`` generator: its object, generator and two
    ``next`` calls were about a tenth of the client's Python for a PostgreSQL step's append
    (issue 20)."""

    __slots__ = ("_conn", "_pool", "_store")

    def __init__(self, store: Connections) -> None:
        self._store = store

    def __enter__(self) -> Any:
        store = self._store
        pool = self._pool = store._get_pool()
        conn = self._conn = pool.get()
        store._local.held = conn
        return conn

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        store, conn = self._store, self._conn
        store._local.held = None
        broken = error is not None and (store._is_disconnect(error) or store._conn_broken(conn))
        self._pool.put(conn, broken=broken)
