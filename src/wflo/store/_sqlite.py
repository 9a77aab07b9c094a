"""SQLite backend: the embedded default (one file, WAL, any number of processes on one host)."""

from __future__ import annotations

import os
import sqlite3
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
        if path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailableError(url=url, detail=str(exc)) from None

    def _connect(self) -> Any:
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

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")

    def _claim_next_sql(self) -> str:
        return _CLAIM_NEXT
