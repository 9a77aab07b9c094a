"""SQLite backend: the embedded default (one file, WAL, any number of processes on one host)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from typing import Any

from .._errors import StoreUnavailableError
from ._base import Store

_CLAIM_NEXT = """
SELECT id FROM runs
WHERE (status = 'queued'
       OR (status = 'running' AND (lease_owner IS NULL OR lease_expires_at < ?))
       OR (status = 'waiting' AND lease_owner IS NULL AND wake_at IS NOT NULL AND wake_at <= ?))
  /*WORKFLOWS*/
ORDER BY created_at
LIMIT 1
"""


class SQLiteStore(Store):
    """A store in one SQLite file.

    WAL mode lets readers run beside the one writer; ``BEGIN IMMEDIATE`` takes the write lock
    at the start of every write transaction, so concurrent writers queue (``busy_timeout``)
    instead of failing half way. ``synchronous=NORMAL`` in WAL mode keeps every committed
    transaction across a process crash (``kill -9``); only an OS crash or power loss can lose
    the last commits, never corrupt the file. Set ``synchronous="FULL"`` to survive those too.
    """

    dialect = "sqlite"

    def __init__(self, url: str, path: str, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 30_000) -> None:
        super().__init__(url)
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._wal_checked = False
        if path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailableError(url=url, detail=str(exc)) from None

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
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
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

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")

    def _claim_next_sql(self) -> str:
        return _CLAIM_NEXT
