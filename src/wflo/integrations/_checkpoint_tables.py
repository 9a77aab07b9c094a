"""The LangGraph checkpointer's tables: their migration and every query on them.

``wflo_lg_checkpoints`` holds one row per checkpoint of a thread (and namespace);
``wflo_lg_writes`` the pending writes of the tasks run from a checkpoint. The serialized
checkpoint and write values are bytes (``BLOB`` on SQLite, ``BYTEA`` on PostgreSQL).

Before ``m017_ckpt_bytes`` the tables were created by the checkpointer on first use, with the
values as base64 text. The migration creates them where they never were, and converts them
where they were: PostgreSQL decodes the old text in place (``decode(…, 'base64')``); SQLite,
which has no base64 in SQL, copies the rows as they are into tables declared ``BLOB``, so a
value written before the upgrade is still text there, and :func:`_bytes` reads both forms.

Every query takes the store and uses only its public interface (``read``, ``write_rows``,
``execute`` on a write transaction's cursor), so this module is the one place that knows these tables.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from ..store import Migration, Store

# The tables as the checkpointer created them on first use (base64 text), for the stores that
# never used it, so the conversion below has the same starting point everywhere.
_OLD_CHECKPOINTS = """CREATE TABLE IF NOT EXISTS wflo_lg_checkpoints (
        thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '', checkpoint_id TEXT NOT NULL,
        parent_checkpoint_id TEXT, type TEXT, checkpoint TEXT NOT NULL, metadata TEXT NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id))"""
_OLD_WRITES = """CREATE TABLE IF NOT EXISTS wflo_lg_writes (
        thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '', checkpoint_id TEXT NOT NULL,
        task_id TEXT NOT NULL, idx INTEGER NOT NULL, channel TEXT NOT NULL, type TEXT, value TEXT NOT NULL,
        task_path TEXT NOT NULL DEFAULT '', PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx))"""

M017_CKPT_BYTES = Migration(
    "m017_ckpt_bytes",
    f"{_OLD_CHECKPOINTS};\n{_OLD_WRITES}",
    {
        "postgresql": (
            "ALTER TABLE wflo_lg_checkpoints ALTER COLUMN checkpoint TYPE BYTEA USING decode(checkpoint, 'base64')",
            "ALTER TABLE wflo_lg_writes ALTER COLUMN value TYPE BYTEA USING decode(value, 'base64')",
        ),
        "sqlite": (
            """CREATE TABLE wflo_lg_checkpoints_m017 (
        thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '', checkpoint_id TEXT NOT NULL,
        parent_checkpoint_id TEXT, type TEXT, checkpoint BLOB NOT NULL, metadata TEXT NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id))""",
            "INSERT INTO wflo_lg_checkpoints_m017 SELECT thread_id, checkpoint_ns, checkpoint_id, "
            "parent_checkpoint_id, type, checkpoint, metadata FROM wflo_lg_checkpoints",
            "DROP TABLE wflo_lg_checkpoints",
            "ALTER TABLE wflo_lg_checkpoints_m017 RENAME TO wflo_lg_checkpoints",
            """CREATE TABLE wflo_lg_writes_m017 (
        thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '', checkpoint_id TEXT NOT NULL,
        task_id TEXT NOT NULL, idx INTEGER NOT NULL, channel TEXT NOT NULL, type TEXT, value BLOB NOT NULL,
        task_path TEXT NOT NULL DEFAULT '', PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx))""",
            "INSERT INTO wflo_lg_writes_m017 SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, "
            "channel, type, value, task_path FROM wflo_lg_writes",
            "DROP TABLE wflo_lg_writes",
            "ALTER TABLE wflo_lg_writes_m017 RENAME TO wflo_lg_writes",
        ),
    },
)

# One checkpoint row: (checkpoint_id, parent_checkpoint_id, type, checkpoint bytes, metadata JSON).
CheckpointRow = tuple[str, str | None, str, bytes, str]

_CHECKPOINT_COLUMNS = "checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata"

_PUT_CHECKPOINT = (
    "INSERT INTO wflo_lg_checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
    "checkpoint, metadata) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) "
    "DO UPDATE SET parent_checkpoint_id = excluded.parent_checkpoint_id, type = excluded.type, "
    "checkpoint = excluded.checkpoint, metadata = excluded.metadata"
)

# Errors, interrupts and the like (negative idx) replace an earlier write; ordinary writes are
# kept once (a task run again after a crash writes the same values).
_PUT_WRITES = (
    "INSERT INTO wflo_lg_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, value, "
    "task_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) "
    "DO UPDATE SET channel = excluded.channel, type = excluded.type, value = excluded.value, "
    "task_path = excluded.task_path WHERE excluded.idx < 0"
)


def _bytes(value: bytes | memoryview | str) -> bytes:
    """A stored value: bytes, or (SQLite, written before ``m017_ckpt_bytes``) base64 text."""
    if isinstance(value, str):
        return base64.b64decode(value)
    return bytes(value)


def _checkpoint_row(row: Sequence[Any]) -> CheckpointRow:
    checkpoint_id, parent_id, type_, blob, metadata = row
    return checkpoint_id, parent_id, type_, _bytes(blob), metadata


# ----------------------------------------------------------------- reading
def get_checkpoint(store: Store, thread_id: str, ns: str, checkpoint_id: str | None) -> CheckpointRow | None:
    """The checkpoint ``checkpoint_id`` of the thread, or (``None``) its latest one."""
    sql = f"SELECT {_CHECKPOINT_COLUMNS} FROM wflo_lg_checkpoints WHERE thread_id = ? AND checkpoint_ns = ?"
    if checkpoint_id:
        row = store.read_one(sql + " AND checkpoint_id = ?", [thread_id, ns, checkpoint_id])
    else:
        row = store.read_one(sql + " ORDER BY checkpoint_id DESC LIMIT 1", [thread_id, ns])
    return None if row is None else _checkpoint_row(row)


def list_checkpoints(
    store: Store,
    *,
    thread_id: str | None = None,
    ns: str | None = None,
    checkpoint_id: str | None = None,
    before: str | None = None,
) -> list[tuple[str, str, CheckpointRow]]:
    """``(thread_id, checkpoint_ns, row)`` of the checkpoints matching every given filter,
    newest first (``before``: only those older than that checkpoint id)."""
    sql = f"SELECT thread_id, checkpoint_ns, {_CHECKPOINT_COLUMNS} FROM wflo_lg_checkpoints WHERE 1 = 1"
    params: list[Any] = []
    for column, op, value in (
        ("thread_id", "=", thread_id),
        ("checkpoint_ns", "=", ns),
        ("checkpoint_id", "=", checkpoint_id),
        ("checkpoint_id", "<", before),
    ):
        if value is not None:
            sql += f" AND {column} {op} ?"
            params.append(value)
    rows = store.read(sql + " ORDER BY checkpoint_id DESC", params)
    return [(row[0], row[1], _checkpoint_row(row[2:])) for row in rows]


def get_writes(store: Store, thread_id: str, ns: str, checkpoint_id: str) -> list[tuple[str, str, str, bytes]]:
    """``(task_id, channel, type, value)`` of the writes pending on a checkpoint, in task order."""
    rows = store.read(
        "SELECT task_id, channel, type, value FROM wflo_lg_writes WHERE thread_id = ? AND checkpoint_ns = ? "
        "AND checkpoint_id = ? ORDER BY task_id, idx",
        [thread_id, ns, checkpoint_id],
    )
    return [(task_id, channel, type_, _bytes(value)) for task_id, channel, type_, value in rows]


# ----------------------------------------------------------------- writing
# Each write is one transaction of its own (``Store.write_rows``: one round trip on PostgreSQL),
# fenced on a run's lease when ``fence=(run_id, owner)`` is given.
def put_checkpoint(store: Store, row: Sequence[Any], *, fence: tuple[str, str] | None = None) -> None:
    """Insert or replace a checkpoint: ``(thread_id, checkpoint_ns, checkpoint_id,
    parent_checkpoint_id, type, checkpoint bytes, metadata JSON)``; the commit waits for the disk."""
    store.write_rows(_PUT_CHECKPOINT, (row,), fence=fence)


def put_writes(
    store: Store, rows: Sequence[Sequence[Any]], *, fence: tuple[str, str] | None = None, relaxed: bool = False
) -> None:
    """Save a task's writes: ``(thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel,
    type, value bytes, task_path)`` each; a write already saved is kept unless its idx is negative.
    ``relaxed``: the commit need not wait for the disk (``Store.write_batch``)."""
    store.write_rows(_PUT_WRITES, rows, fence=fence, relaxed=relaxed)


def delete_thread(store: Store, cur: Any, thread_id: str) -> None:  # on a write transaction's cursor
    """Forget a thread: its checkpoints and their writes, in every namespace."""
    store.execute(cur, "DELETE FROM wflo_lg_checkpoints WHERE thread_id = ?", [thread_id])
    store.execute(cur, "DELETE FROM wflo_lg_writes WHERE thread_id = ?", [thread_id])
