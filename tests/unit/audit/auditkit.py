"""Helpers for the audit tests: build runs through the store, and tamper with it as an admin."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from wflo.store import Head, NewEvent, Store, link_hash


def make_run(store: Store, run_id: str, calls: int = 5, *, status: str = "succeeded", finish: bool = True,
             workflow: str = "wf", at: str | None = None) -> Head:  # fmt: skip
    """A run with ``run.created``, ``run.started``, ``calls`` call events (seq 3..) and an end."""
    run, _ = store.create_run(run_id=run_id, workflow=workflow, input={"n": calls}, owner="w1")
    head = Head(run.last_seq, run.last_hash)
    events = [
        NewEvent("call.completed", {"call": str(i), "i": i, "kind": "step", "name": "s"}, at) for i in range(calls)
    ]
    head = store.append(run_id, head, events, owner="w1")
    if finish:
        end = "run.completed" if status == "succeeded" else f"run.{status}"
        head = store.append(run_id, head, [NewEvent(end, {"output": calls}, at)], owner="w1", status=status,
                            output=calls, finish=True)  # fmt: skip
    return head


class Admin:
    """Raw SQL on the store's database, past the append-only trigger (a DBA with write access)."""

    def __init__(self, conn: Any, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        cur = self.conn.execute(sql, tuple(params))
        return list(cur.fetchall()) if cur.description else []

    def rehash_from(self, chain: str, seq: int) -> tuple[int, str]:
        """Recompute every hash of ``chain`` from ``seq`` on (a consistent rewrite); return the head."""
        rows = self.run("SELECT seq, type, at, data, prev_hash FROM events WHERE chain = ? ORDER BY seq", (chain,))
        prev = None
        for s, type_, at, data, prev_hash in rows:
            if s < seq:
                prev = self.run("SELECT hash FROM events WHERE chain = ? AND seq = ?", (chain, s))[0][0]
                continue
            prev = prev if prev is not None else prev_hash
            digest = link_hash(prev, chain, s, type_, at, data)
            self.run("UPDATE events SET prev_hash = ?, hash = ? WHERE chain = ? AND seq = ?", (prev, digest, chain, s))
            prev = digest
        last = rows[-1][0]
        assert prev is not None
        return int(last), prev

    def set_run_head(self, chain: str, seq: int, digest: str) -> None:
        if chain == "system":
            self.run("UPDATE chain_heads SET last_seq = ?, last_hash = ? WHERE chain = ?", (seq, digest, chain))
        else:
            self.run("UPDATE runs SET last_seq = ?, last_hash = ? WHERE id = ?", (seq, digest, chain))

    def hash_at(self, chain: str, seq: int) -> str:
        return str(self.run("SELECT hash FROM events WHERE chain = ? AND seq = ?", (chain, seq))[0][0])


@contextmanager
def admin(url: str) -> Iterator[Admin]:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
        try:
            yield Admin(conn, "sqlite")
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute("SET session_replication_role = replica")  # triggers off: the DBA's way round them
            yield Admin(pg, "postgresql")
