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
``execute`` on a write transaction's cursor), so this module is the one place that knows these
tables. A checkpoint is read with its pending writes in one statement.
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
# One pending write: (task_id, channel, type, value bytes).
WriteRow = tuple[str, str, str, bytes]
# A checkpoint as read: (thread_id, checkpoint_ns, its row, its pending writes in task order).
Saved = tuple[str, str, CheckpointRow, list[WriteRow]]

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


# The checkpoints listed (``c``: ``{where}``, then ``{tail}``) and the writes pending on each,
# in one statement (one round trip on PostgreSQL): one UNION ALL of both, told apart by
# ``part`` (0: a checkpoint, 1: one of its writes), each checkpoint's writes right after it in
# (task_id, idx) order. ``name`` is a checkpoint's parent id or a write's channel. A join would
# instead repeat a checkpoint's bytes once per write.
_WITH_WRITES = (
    "WITH c AS (SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata "
    "FROM wflo_lg_checkpoints WHERE {where}{tail}) "
    "SELECT thread_id, checkpoint_ns, checkpoint_id, 0 AS part, NULL AS task_id, 0 AS idx, "
    "parent_checkpoint_id AS name, type, checkpoint AS value, metadata FROM c "
    "UNION ALL SELECT w.thread_id, w.checkpoint_ns, w.checkpoint_id, 1, w.task_id, w.idx, w.channel, w.type, "
    "w.value, NULL FROM wflo_lg_writes w JOIN c ON w.thread_id = c.thread_id "
    "AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id "
    "ORDER BY checkpoint_id DESC, thread_id, checkpoint_ns, part, task_id, idx"
)


def _read_with_writes(store: Store, where: str, tail: str, params: Sequence[Any]) -> list[Saved]:
    out: list[Saved] = []
    for thread_id, ns, checkpoint_id, part, task_id, _idx, name, type_, value, metadata in store.read(
        _WITH_WRITES.format(where=where, tail=tail), params
    ):
        if part == 0:
            out.append((thread_id, ns, (checkpoint_id, name, type_, _bytes(value), metadata), []))
        else:  # a write of the checkpoint just before it
            out[-1][3].append((task_id, name, type_, _bytes(value)))
    return out


# A thread's checkpoint and its pending writes in one statement (one round trip on PostgreSQL):
# the checkpoint row (``part`` 0) then its writes (``part`` 1) in (task_id, idx) order, as one
# UNION ALL; ``name`` is the checkpoint's id, a write's channel. Each branch finds its rows by
# primary key (the latest: ``max(checkpoint_id)`` is the id ``ORDER BY … DESC LIMIT 1`` picks),
# with no temporary table to sort, which on SQLite costs about what the second query saved.
_CHECKPOINT_PART = (
    "SELECT 0 AS part, NULL AS task_id, 0 AS idx, checkpoint_id AS name, parent_checkpoint_id AS parent, type, "
    "checkpoint AS value, metadata FROM wflo_lg_checkpoints WHERE thread_id = ? AND checkpoint_ns = ?"
)
_WRITES_PART = (
    "SELECT 1, task_id, idx, channel, NULL, type, value, NULL FROM wflo_lg_writes "
    "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = "
)
_GET_NAMED = f"{_CHECKPOINT_PART} AND checkpoint_id = ? UNION ALL {_WRITES_PART}? ORDER BY part, task_id, idx"
_GET_LATEST = (
    f"SELECT * FROM ({_CHECKPOINT_PART} ORDER BY checkpoint_id DESC LIMIT 1) AS c UNION ALL {_WRITES_PART}"
    "(SELECT max(checkpoint_id) FROM wflo_lg_checkpoints WHERE thread_id = ? AND checkpoint_ns = ?) "
    "ORDER BY part, task_id, idx"
)


# ----------------------------------------------------------------- reading
def get_checkpoint(store: Store, thread_id: str, ns: str, checkpoint_id: str | None) -> Saved | None:
    """The checkpoint ``checkpoint_id`` of the thread, or (``None``) its latest one, with its
    pending writes: one statement."""
    if checkpoint_id:
        rows = store.read(_GET_NAMED, [thread_id, ns, checkpoint_id, thread_id, ns, checkpoint_id])
    else:
        rows = store.read(_GET_LATEST, [thread_id, ns, thread_id, ns, thread_id, ns])
    if not rows or rows[0][0] != 0:  # no such checkpoint (writes without one are not read)
        return None
    _, _, _, found_id, parent_id, type_, blob, metadata = rows[0]
    writes = [(task_id, channel, type_, _bytes(value)) for _, task_id, _, channel, _, type_, value, _ in rows[1:]]
    return thread_id, ns, (found_id, parent_id, type_, _bytes(blob), metadata), writes


def list_checkpoints(
    store: Store,
    *,
    thread_id: str | None = None,
    ns: str | None = None,
    checkpoint_id: str | None = None,
    before: str | None = None,
    limit: int | None = None,
) -> list[Saved]:
    """The checkpoints matching every given filter, newest first (``before``: only those older
    than that checkpoint id; ``limit``: at most that many), with their pending writes: one statement."""
    where = "1 = 1"
    params: list[Any] = []
    for column, op, value in (
        ("thread_id", "=", thread_id),
        ("checkpoint_ns", "=", ns),
        ("checkpoint_id", "=", checkpoint_id),
        ("checkpoint_id", "<", before),
    ):
        if value is not None:
            where += f" AND {column} {op} ?"
            params.append(value)
    tail = ""
    if limit is not None:
        tail = " ORDER BY checkpoint_id DESC LIMIT ?"
        params.append(limit)
    return _read_with_writes(store, where, tail, params)


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
