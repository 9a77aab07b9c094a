"""SQLite backend: the embedded default (one file, WAL, any number of processes on one host)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from .._errors import StoreCorruptError, StoreNotFoundError, StoreUnavailableError
from ._base import INSERT_EVENT, Store, StoreOp, _head_update, fenced_update
from ._feed import SQLITE_WATCH_INTERVAL
from ._pool import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT
from ._records import Head

T = TypeVar("T")

# The ``synchronous`` settings whose commits wait for the disk in WAL mode (names and numbers).
_SYNCING = frozenset({"FULL", "EXTRA", "2", "3"})

# What SQLite says when the file is not (or no longer) a sound database.
_CORRUPT = ("file is not a database", "malformed", "database disk image", "file is encrypted")


# A step's head update (``SQLiteStore._append_step``), as ``_move_head`` builds it for an append
# that sets no status, end, release or wake-up, under an owner's lease and with no owner (its
# insert: ``INSERT_EVENT``).
_STEP_HEAD = _head_update("?", False, False, False, False, True)
_STEP_HEAD_UNOWNED = _head_update("?", False, False, False, False, False)

_writers: dict[str, threading.RLock] = {}
_writers_lock = threading.Lock()


def _writer_lock(key: str) -> threading.RLock:
    """One lock per database file and process, taken around each write transaction."""
    lock = _writers.get(key)
    if lock is None:
        with _writers_lock:
            lock = _writers.setdefault(key, threading.RLock())
    return lock


def _forget_writers() -> None:
    # A child process must not inherit a lock that a thread of its parent held at the fork.
    global _writers_lock
    _writers.clear()
    _writers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_writers)


class SQLiteStore(Store):
    """A store in one SQLite file.

    WAL mode lets readers run beside the one writer; ``BEGIN IMMEDIATE`` takes the write lock
    at the start of every write transaction, so concurrent writers queue (``busy_timeout``)
    instead of failing half way. ``synchronous=NORMAL`` in WAL mode keeps every committed
    transaction across a process crash (``kill -9``); only an OS crash or power loss can lose
    the last commits, never corrupt the file. Set ``synchronous="FULL"`` to survive those too.

    At most ``pool_size`` connections are open at once (each holds descriptors on the file,
    its WAL and shared memory); threads take one per transaction. Lease expiry is judged on
    this machine's clock, which every process using the file shares.

    With ``create=False`` (read-only uses such as listing runs) a missing file is refused
    with ``StoreNotFoundError`` instead of created, and no directory is made.
    """

    dialect = "sqlite"
    claim_outside_lock = True
    offload_threads = 2
    """SQLite has one writer at a time: one thread for writes (in order, per run) and one so
    that reads, or a rate limit's wait, are not stuck behind a writer waiting for the lock."""

    def __init__(
        self,
        url: str,
        path: str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 30_000,
        create: bool = True,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ) -> None:
        super().__init__(url, pool_size=pool_size, pool_timeout=pool_timeout)
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._wal_checked = False
        self._writer_key = os.path.realpath(path)
        if not create:
            if not os.path.isfile(path):
                raise StoreNotFoundError(url=url, path=path)
            return
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(url=url, detail=f"cannot create {directory}: {exc.strerror}") from None

    def _conn_broken(self, conn: Any) -> bool:
        # A transaction the failed operation could not roll back must not reach the next user,
        # nor a connection left at a relaxed ``synchronous`` (see ``write_batch``).
        if conn.in_transaction:
            return True
        if not self._syncing():
            return False
        try:
            return int(conn.execute("PRAGMA synchronous").fetchone()[0]) < 2
        except sqlite3.Error:
            return True

    def _syncing(self) -> bool:
        return str(self.synchronous).upper() in _SYNCING

    def write_batch(self, fn: Callable[[Any], T], *, relaxed: bool = False) -> T:
        if not relaxed or not self._syncing():
            return super().write_batch(fn)

        # ``synchronous`` is per connection and cannot change inside a transaction: it is
        # lowered on the pooled connection just before BEGIN and put back right after the
        # commit (or rollback), so no other transaction on that connection commits relaxed; if
        # putting it back fails, ``_conn_broken`` keeps the connection out of the pool.
        def go() -> T:
            with self._connection() as conn:
                if conn.in_transaction:  # a caller's transaction: commits as it does
                    return super(SQLiteStore, self).write_batch(fn)
                conn.execute("PRAGMA synchronous = NORMAL")
                try:
                    with self._tx() as cur:
                        return fn(cur)
                finally:
                    conn.execute(f"PRAGMA synchronous = {self.synchronous}")

        return self._retrying(go)

    def write_rows(
        self,
        sql: str,
        rows: Sequence[Sequence[Any]],
        *,
        fence: tuple[str, str] | None = None,
        relaxed: bool = False,
    ) -> None:
        # What ``write_batch`` does through its layers (``_retrying``, ``_connection``, the
        # writer lock, ``_tx``), in one function: the same pool, lock, BEGIN IMMEDIATE (busy
        # handling), lease check, retry, and relaxed commit (its level set on the connection
        # just before BEGIN and put back right after; a connection whose level could not be put
        # back is closed by ``_conn_broken``).
        if getattr(self._local, "held", None) is not None:  # inside a caller's transaction
            return super().write_rows(sql, rows, fence=fence, relaxed=relaxed)
        relax = relaxed and self._syncing()

        def rows_in(cur: Any) -> None:
            if fence is not None:
                self.fence(cur, *fence)
            cur.executemany(sql, rows)

        self._retrying(functools.partial(self._immediate, rows_in, relax=relax))

    def _immediate(self, body: Callable[[Any], T], *, relax: bool = False) -> T:
        """``body(cursor)`` in one write transaction on a pooled connection, without the
        layers of ``_connection``/``_tx``: the writer lock, ``BEGIN IMMEDIATE`` (busy
        handling), a rollback on an error, the commit; ``relax``: the connection's level set to
        ``NORMAL`` just before and put back right after. A connection whose commit or level
        could not be put back is closed (``_conn_broken``), not pooled. The fast path of
        ``write_rows`` and of a step's append; not retried here (the callers' ``_retrying``)."""
        pool = self._get_pool()
        conn = pool.get()
        try:
            if relax:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with _writer_lock(self._writer_key):
                    cur = conn.cursor()
                    try:
                        cur.execute("BEGIN IMMEDIATE")
                        try:
                            result = body(cur)
                        except BaseException:
                            with contextlib.suppress(Exception):
                                cur.execute("ROLLBACK")
                            raise
                        cur.execute("COMMIT")
                    finally:
                        cur.close()
            finally:
                if relax:
                    conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException as exc:
            pool.put(conn, broken=self._is_disconnect(exc) or self._conn_broken(conn))
            raise
        pool.put(conn)
        return result

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
        # A step's append (no ops) through one function, as ``write_rows`` is: the same pool,
        # writer lock, BEGIN IMMEDIATE, fenced head move (``_move_head``), insert and commit
        # (durable: SQLite commits a relaxed marker as any other), without the five context
        # managers of ``_connection``/``_tx`` (about 5 µs of a step's Python). Ops (which may
        # read through the store inside the transaction) and a caller's transaction take the
        # shared path. A failed COMMIT leaves the transaction open: ``_conn_broken`` then
        # closes the connection instead of pooling it, as ``_tx``'s callers do.
        if ops or getattr(self._local, "held", None) is not None:
            return super()._append_once(
                run_id, head, new, rows, owner=owner, now=now, status=status, finish=finish,
                output_json=output_json, error_json=error_json, release=release, wake_at=wake_at,
                notify=notify, ops=ops, relaxed=relaxed,
            )  # fmt: skip

        def step_in(cur: Any) -> bool:
            cancel = self._move_head(
                cur, run_id, head, new, owner=owner, now=now, status=status, finish=finish,
                output_json=output_json, error_json=error_json, release=release, wake_at=wake_at,
            )  # fmt: skip
            self._insert_rows(cur, rows)
            return cancel

        return self._immediate(step_in)

    def _append_step(
        self, run_id: str, head: Head, new: Head, row: tuple[Any, ...], owner: str | None, now: str
    ) -> bool:
        """A step's append (one event, only the head moves, fenced on ``owner``) through
        :meth:`_immediate`, with the step's head update (``_STEP_HEAD``) and one ``execute`` for
        its row: without ``_move_head``'s parameter and statement building (issue 20,
        ``sqlcpu``). Inside a caller's transaction: the shared path."""
        if getattr(self._local, "held", None) is not None:
            return super()._append_step(run_id, head, new, row, owner, now)
        params: tuple[Any, ...]
        if owner is None:
            update, params = _STEP_HEAD_UNOWNED, (new.seq, new.hash, now, run_id, head.seq)
        else:
            update, params = _STEP_HEAD, (new.seq, new.hash, now, run_id, head.seq, owner)

        def step_in(cur: Any) -> bool:
            cancel = fenced_update(cur, update, params, run_id, owner)
            cur.execute(INSERT_EVENT, row)
            return cancel

        return self._immediate(step_in)

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # ``Connections._fetchall`` in one function (reads are on the LangGraph checkpointer's
        # path too: a graph reads its thread's checkpoint at each invocation): a pooled
        # connection for the one statement, closed instead of pooled after a failure that
        # left it unusable, retried when SQLite answered "locked" at once.
        if getattr(self._local, "held", None) is not None:  # inside this thread's transaction
            return super()._fetchall(sql, params)
        args = tuple(params)

        def go() -> list[tuple[Any, ...]]:
            pool = self._get_pool()
            conn = pool.get()
            try:
                cur = conn.cursor()
                try:
                    rows: list[tuple[Any, ...]] = cur.execute(sql, args).fetchall()
                finally:
                    cur.close()
            except BaseException as exc:
                pool.put(conn, broken=self._is_disconnect(exc) or self._conn_broken(conn))
                raise
            pool.put(conn)
            return rows

        return self._retrying(go)

    def sync(self) -> None:
        # A commit at FULL ends with this same fsync of the WAL: it makes every frame written
        # before it durable, those of relaxed commits included. No WAL file: its last user
        # checkpointed it into the database (synced) and removed it.
        if not self._syncing():
            return
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            getattr(os, "fdatasync", os.fsync)(fd)
        finally:
            os.close(fd)

    def _translate_error(self, error: BaseException) -> BaseException | None:
        if isinstance(error, sqlite3.DatabaseError) and any(m in str(error) for m in _CORRUPT):
            return StoreCorruptError(path=self.path, detail=str(error))
        if isinstance(error, StoreUnavailableError) and any(m in str(error.detail) for m in _CORRUPT):
            return StoreCorruptError(path=self.path, detail=str(error.detail))
        return None

    def _is_disconnect(self, error: BaseException) -> bool:
        # SQLite answers SQLITE_BUSY without waiting in a few cases (WAL recovery, a reader
        # upgrading to a writer); the whole operation is safe to run again.
        return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)

    def _connect(self) -> Any:
        for attempt in range(40):
            try:
                return self._open()
            except StoreUnavailableError as exc:
                if "locked" not in str(exc) or attempt == 39:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _open(self) -> Any:
        conn: Any = None
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            with contextlib.suppress(Exception):
                conn.close()
            if any(m in str(exc) for m in _CORRUPT):
                raise StoreCorruptError(path=self.path, detail=str(exc)) from None
            raise StoreUnavailableError(url=self.url, detail=str(exc)) from None
        return conn

    def _ensure_wal(self) -> None:
        """Switch the file to WAL once, under a file lock.

        WAL mode is stored in the database file. Switching needs an exclusive lock, so many
        processes opening a new database at once would otherwise wait on each other's
        transactions; here exactly one switches it and the others find it done.
        """
        with open(self.path + ".wflo-lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000)
                try:
                    conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                    if str(mode).lower() != "wal":
                        conn.execute("PRAGMA journal_mode = WAL")
                finally:
                    conn.close()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._wal_checked = True

    def _open_watch(self) -> Any:
        conn = self._open()
        return [conn, conn.execute("PRAGMA data_version").fetchone()[0]]

    def _watch(self, watch: Any, timeout: float) -> list[str | None]:
        # data_version moves when another connection (any process) commits to the file.
        conn, seen = watch
        deadline = time.monotonic() + timeout
        while True:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != seen:
                watch[1] = version
                return [None]
            if time.monotonic() >= deadline:
                return []
            time.sleep(SQLITE_WATCH_INTERVAL)

    def _close_watch(self, watch: Any) -> None:
        if watch is not None:
            watch[0].close()

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def _tx(self, *, relaxed: bool = False) -> Iterator[Any]:
        # Writers of this process queue on a lock, woken the moment the writer before them
        # commits. Left to SQLite, a second writer sleeps in its busy handler with growing
        # pauses (up to 100 ms) however soon the lock is free: threads writing at once (the
        # checkpoints LangGraph saves from its own threads) then wait far longer than they
        # write. Other processes still queue on SQLite's lock, as before. The connection is
        # taken first: a thread holding the lock never waits for the pool.
        with self._connection(), _writer_lock(self._writer_key), super()._tx(relaxed=relaxed) as cur:
            yield cur
