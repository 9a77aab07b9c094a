"""The audit's tables and every query the audit makes, on the store's public interface.

The audit owns one table, ``payloads`` (the completions the content policy keeps out of the
chain, see ``_content``); its migration lives here and the store's list names it as
``"wflo.audit._tables:M005_PAYLOADS"``. The events table, the chain heads and the runs belong
to the store; the audit only reads them (and deletes chains through the store's prune path).
Queries go through ``store.read``/``store.read_one``/``store.stream``/``store.write`` and the cursors the store
hands to ``write`` (``store.execute``); nothing here reaches into the store's private modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..store import SYSTEM_CHAIN, Migration, RowStream, Store

Row = tuple[Any, ...]

# --------------------------------------------------------------------------- migrations
M005_PAYLOADS = Migration(
    "m005_payloads",
    """
CREATE TABLE payloads (
    run_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, call_id)
)
""",
)


# --------------------------------------------------------------------------- verification
def chain_links(store: Store, chain: str, batch: int) -> RowStream:
    """``(seq, type, at, data, prev_hash, hash)`` of ``chain`` in order, streamed."""
    return store.stream(
        "SELECT seq, type, at, data, prev_hash, hash FROM events WHERE chain = ? ORDER BY seq", (chain,), batch=batch
    )


def link_row(store: Store, chain: str, seq: int) -> Row | None:
    """``(type, at, data)`` of one event (to re-check a link the fast scan flagged)."""
    return store.read_one("SELECT type, at, data FROM events WHERE chain = ? AND seq = ?", (chain, seq))


def scan_links(store: Store, lo: str, below: str | None, batch: int, after: tuple[Any, Any] | None = None) -> RowStream:
    """``(chain, seq, type, at, data, prev_hash, hash)`` in key order, streamed from one
    snapshot: from the chain ``lo`` (any seq, even a forged 0 or -1), or after the key
    ``after`` (to go on after a lost connection), up to the chain ``below``."""
    where, params = ("chain >= ?", [lo]) if after is None else ("(chain, seq) > (?, ?)", [after[0], after[1]])
    if below is not None:
        where += " AND chain < ?"
        params.append(below)
    return store.stream(
        f"SELECT chain, seq, type, at, data, prev_hash, hash FROM events WHERE {where} ORDER BY chain, seq",
        params,
        batch=batch,
    )


def undecodable(store: Store, exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite refusing to read a text column that is not valid UTF-8 (a row
    written past wflo: wflo only writes text that is). PostgreSQL refuses such text on write."""
    return store.dialect == "sqlite" and exc.__class__.__name__ == "OperationalError" and "decode" in str(exc)


def _as_bytes(column: str) -> str:
    return f"CASE WHEN typeof({column}) = 'text' THEN CAST({column} AS BLOB) ELSE {column} END"


def _decoded(value: Any) -> Any:
    """A text column read as bytes: its text, or the bytes themselves when they are not UTF-8
    (verification then reports the row: bytes are never text that hashes)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def raw_links(
    store: Store,
    *,
    chain: str | None = None,
    lo: str = "",
    after: tuple[Any, Any] | None = None,
    below: str | None = None,
) -> list[Row]:
    """SQLite only: ``(chain, seq, type, at, data, prev_hash, hash)`` in key order, of ``chain``
    or of the chains from ``lo`` (or after the key ``after``) up to ``below``, each text column
    read as bytes so that a forged value that is not UTF-8 comes back as bytes instead of
    failing the whole read. Only for the rare store that has one: every row asked is read at once."""
    cols = ", ".join(_as_bytes(c) for c in ("chain", "seq", "type", "at", "data", "prev_hash", "hash"))
    where, params = ["chain >= ?"], [lo]
    if chain is not None:
        where.append("chain = ?")
        params.append(chain)
    if after is not None:
        where.append("(chain, seq) > (?, ?)")
        params += [after[0], after[1]]
    if below is not None:
        where.append("chain < ?")
        params.append(below)
    out = []
    for row in store.read(f"SELECT {cols} FROM events WHERE {' AND '.join(where)} ORDER BY chain, seq", params):
        name = _decoded(row[0])
        if isinstance(name, bytes):  # a chain name that is not UTF-8: named as best it can be, its rows failed
            row = (name.decode("utf-8", "replace"), row[1], row[2], row[3], b"", *row[5:])
        row = tuple(_decoded(v) for v in row)
        # A hash that is not text can never be a link's hash; said as text, so reports stay JSON.
        out.append(row[:5] + tuple(f"(not UTF-8: {v[:32].hex()})" if isinstance(v, bytes) else v for v in row[5:]))
    return out


def count_events(store: Store, where: str = "", params: Sequence[Any] = ()) -> int:
    row = store.read_one(f"SELECT COUNT(*) FROM events{where}", params)
    return int(row[0]) if row else 0


def chain_at(store: Store, offset: int) -> str | None:
    """The chain of the ``offset``-th event in key order (a split point for parallel work)."""
    row = store.read_one("SELECT chain FROM events ORDER BY chain, seq LIMIT 1 OFFSET ?", (offset,))
    return str(row[0]) if row else None


def recorded_head(store: Store, chain: str) -> tuple[int, str] | None:
    """The head the store recorded for ``chain`` (a run's row, or the chain heads table)."""
    row = None
    if not (chain == SYSTEM_CHAIN or chain.startswith("_")):
        row = store.read_one("SELECT last_seq, last_hash FROM runs WHERE id = ?", (chain,))
    if row is None:  # not a run's: a chain of ``Store.append_chain``
        row = store.read_one("SELECT last_seq, last_hash FROM chain_heads WHERE chain = ?", (chain,))
    return (int(row[0]), row[1]) if row else None


def run_rows(store: Store, run_ids: Sequence[str]) -> dict[str, Row]:
    """``{run id: (last_seq, last_hash, status, output, workflow, tenant, parent_id)}`` of the
    runs that exist among ``run_ids``."""
    if not run_ids:
        return {}
    marks = ", ".join("?" * len(run_ids))
    rows = store.read(
        f"SELECT id, last_seq, last_hash, status, output, workflow, tenant, parent_id FROM runs WHERE id IN ({marks})",
        list(run_ids),
    )
    return {r[0]: tuple(r[1:]) for r in rows}


def prune_records(store: Store) -> list[str]:
    """The data (JSON text) of every ``audit.pruned`` event on the system chain, in order."""
    rows = store.read("SELECT data FROM events WHERE chain = ? AND type = 'audit.pruned' ORDER BY seq", (SYSTEM_CHAIN,))
    return [r[0] for r in rows]


# Up to this many events since a time, their chains are read through the index on ``at`` (a
# recent window: ~1 µs an event); beyond it one DISTINCT walk of the key index is cheaper
# (~0.3 s at 1,000,000 events on SQLite, whose planner takes that walk whatever the window).
SINCE_BY_TIME = 100_000


def chains_since(store: Store, since: str) -> set[str]:
    """Chains with an event at or after ``since`` (plus the system chain if it has events)."""
    # How many events the window holds, counted on the ``at`` index and no further than the
    # bound: a few milliseconds at most.
    row = store.read_one("SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE at >= ? LIMIT ?) w", (since, SINCE_BY_TIME))
    if row is not None and int(row[0]) < SINCE_BY_TIME:
        recent = {r[0] for r in store.read("SELECT chain FROM events WHERE at >= ?", (since,))}
    else:
        recent = {r[0] for r in store.read("SELECT DISTINCT chain FROM events WHERE at >= ?", (since,))}
    if store.read_one("SELECT 1 FROM events WHERE chain = ?", (SYSTEM_CHAIN,)):
        recent.add(SYSTEM_CHAIN)
    return recent


def runs_without_events(store: Store) -> list[str]:
    return [r[0] for r in store.read(
        "SELECT id FROM runs WHERE NOT EXISTS (SELECT 1 FROM events WHERE events.chain = runs.id) ORDER BY id"
    )]  # fmt: skip


# --------------------------------------------------------------------------- checkpoints
def chain_heads_now(store: Store) -> list[Row]:
    """``(chain, last seq, its hash)`` of every chain that has events, by chain."""
    return store.read(
        "SELECT e.chain, e.seq, e.hash FROM events e "
        "JOIN (SELECT chain, MAX(seq) AS m FROM events GROUP BY chain) t ON e.chain = t.chain AND e.seq = t.m "
        "ORDER BY e.chain"
    )


def hash_at(store: Store, chain: str, seq: int) -> str | None:
    row = store.read_one("SELECT hash FROM events WHERE chain = ? AND seq = ?", (chain, seq))
    return None if row is None else str(row[0])


def last_seq(store: Store, chain: str) -> int:
    """The highest seq of ``chain`` (0 when it has no events)."""
    row = store.read_one("SELECT MAX(seq) FROM events WHERE chain = ?", (chain,))
    return int(row[0]) if row and row[0] is not None else 0


# --------------------------------------------------------------------------- payloads (content policy)
def keep_payload(store: Store, cur: Any, run_id: str, call_id: str, body: str) -> None:
    """Inside the call's write transaction: keep the exact response of one call."""
    store.execute(cur, "DELETE FROM payloads WHERE run_id = ? AND call_id = ?", (run_id, call_id))
    store.execute(cur, "INSERT INTO payloads (run_id, call_id, body) VALUES (?, ?, ?)", (run_id, call_id, body))


def payload_body(store: Store, run_id: str, call_id: str) -> str | None:
    rows = store.read("SELECT body FROM payloads WHERE run_id = ? AND call_id = ?", (run_id, call_id))
    return str(rows[0][0]) if rows else None


def drop_payloads(store: Store, cur: Any, run_id: str) -> None:
    """Inside a write transaction: forget every kept response of a run."""
    store.execute(cur, "DELETE FROM payloads WHERE run_id = ?", (run_id,))


# --------------------------------------------------------------------------- export
def event_filters(run_id: str | None, since: str | None) -> tuple[str, list[Any]]:
    """`` WHERE …`` (or nothing) and its parameters for one run and/or events since a time."""
    clauses, params = [], []
    if run_id is not None:
        clauses.append("chain = ?")
        params.append(run_id)
    if since is not None:
        clauses.append("at >= ?")
        params.append(since)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


EXPORT_COLUMNS = ("chain", "seq", "type", "at", "data", "prev_hash", "hash")


def export_page(
    store: Store, run_id: str | None, since: str | None, last: tuple[str, int] | None, limit: int
) -> list[Row]:
    """Raw event rows (``EXPORT_COLUMNS``) ordered by (chain, seq), after the key ``last``."""
    where, params = event_filters(run_id, since)
    key = "(chain > ? OR (chain = ? AND seq > ?))"
    if last is None:
        sql, p = f"SELECT {', '.join(EXPORT_COLUMNS)} FROM events{where}", list(params)
    else:
        sql = f"SELECT {', '.join(EXPORT_COLUMNS)} FROM events{where}{' AND ' if where else ' WHERE '}{key}"
        p = [*params, last[0], last[0], last[1]]
    return store.read(sql + " ORDER BY chain, seq LIMIT ?", [*p, limit])


# --------------------------------------------------------------------------- prune
def prune_candidates(store: Store, statuses: Sequence[str], before: str) -> list[Row]:
    """``(id, last_seq, last_hash)`` of runs in ``statuses`` whose last event is before ``before``."""
    marks = ", ".join("?" * len(statuses))
    return store.read(
        f"SELECT r.id, r.last_seq, r.last_hash FROM runs r JOIN events e ON e.chain = r.id AND e.seq = r.last_seq "
        f"WHERE r.status IN ({marks}) AND e.at < ? ORDER BY r.id",
        (*statuses, before),
    )


def prune_chain_postgres(store: Store, cur: Any, chain: str, count: int, head: str) -> None:
    """Inside a write transaction on PostgreSQL: the one function allowed to delete events
    (it checks the run's head itself and raises SQLSTATE WF001 if the chain moved)."""
    store.execute(cur, "SELECT wflo_prune_chain(?, ?, ?)", (chain, count, head))


def locked_run_head(store: Store, cur: Any, run_id: str) -> Row | None:
    """Inside a write transaction: ``(last_seq, last_hash)`` of a run, locked until commit."""
    store.execute(cur, "SELECT last_seq, last_hash FROM runs WHERE id = ?" + store.for_update, (run_id,))
    row: Row | None = cur.fetchone()
    return row


def delete_chain_events(store: Store, cur: Any, chain: str, count: int) -> int:
    """Inside a write transaction (SQLite): delete a chain's first ``count`` events; how many went."""
    store.execute(cur, "DELETE FROM events WHERE chain = ? AND seq <= ?", (chain, count))
    return int(cur.rowcount)


# --------------------------------------------------------------------------- the compliance report
def runs_by_workflow_status(store: Store, window: tuple[str, str]) -> list[Row]:
    return store.read(
        "SELECT workflow, status, COUNT(*) FROM runs WHERE created_at >= ? AND created_at < ? GROUP BY workflow, status",
        window,
    )


def run_events_of_types(store: Store, window: tuple[str, str], types: Sequence[str]) -> list[Row]:
    """``(chain, seq, type, at, data, workflow, tenant)`` of events of ``types`` in the window."""
    marks = ", ".join("?" * len(types))
    return store.read(
        "SELECT e.chain, e.seq, e.type, e.at, e.data, r.workflow, r.tenant FROM events e "
        f"LEFT JOIN runs r ON r.id = e.chain WHERE e.at >= ? AND e.at < ? AND e.type IN ({marks}) "
        "ORDER BY e.at, e.chain, e.seq",
        (*window, *types),
    )


def system_events(store: Store, window: tuple[str, str]) -> list[Row]:
    """``(seq, type, at, data)`` of the system chain's events in the window."""
    return store.read(
        "SELECT seq, type, at, data FROM events WHERE chain = ? AND at >= ? AND at < ? ORDER BY seq",
        (SYSTEM_CHAIN, *window),
    )
