"""The audit's tables and every query the audit makes, on the store's public interface.

The audit owns one table, ``payloads`` (the completions the content policy keeps out of the
chain, see ``_content``); its migration lives here and the store's list names it as
``"wflo.audit._tables:M005_PAYLOADS"``. The events table, the chain heads and the runs belong
to the store; the audit only reads them (and deletes chains through the store's prune path).
Queries go through ``store.read``/``store.read_one``/``store.write`` and the cursors the store
hands to ``write`` (``store.execute``); nothing here reaches into the store's private modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..store import SYSTEM_CHAIN, Migration, Store

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
def chain_links(store: Store, chain: str, after: int, limit: int) -> list[Row]:
    """``(seq, type, at, data, prev_hash, hash)`` of ``chain`` after ``after``, in order."""
    return store.read(
        "SELECT seq, type, at, data, prev_hash, hash FROM events WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?",
        (chain, after, limit),
    )


def link_row(store: Store, chain: str, seq: int) -> Row | None:
    """``(type, at, data)`` of one event (to re-check a link the fast scan flagged)."""
    return store.read_one("SELECT type, at, data FROM events WHERE chain = ? AND seq = ?", (chain, seq))


def _range(lo: str, after: tuple[str, int] | None, below: str | None) -> tuple[str, list[Any]]:
    # The first page starts at the chain ``lo`` itself (any seq, even a forged 0 or -1).
    where, params = ("chain >= ?", [lo]) if after is None else ("(chain, seq) > (?, ?)", [after[0], after[1]])
    if below is not None:
        where += " AND chain < ?"
        params.append(below)
    return where, params


def scan_links(store: Store, lo: str, after: tuple[str, int] | None, below: str | None, limit: int) -> list[Row]:
    """``(chain, seq, type, at, data, prev_hash, hash)`` in key order: from the chain ``lo``
    (or after the key ``after``) up to the chain ``below``."""
    where, params = _range(lo, after, below)
    return store.read(
        f"SELECT chain, seq, type, at, data, prev_hash, hash FROM events WHERE {where} ORDER BY chain, seq LIMIT ?",
        [*params, limit],
    )


def count_events(store: Store, where: str = "", params: Sequence[Any] = ()) -> int:
    row = store.read_one(f"SELECT COUNT(*) FROM events{where}", params)
    return int(row[0]) if row else 0


def chain_at(store: Store, offset: int) -> str | None:
    """The chain of the ``offset``-th event in key order (a split point for parallel work)."""
    row = store.read_one("SELECT chain FROM events ORDER BY chain, seq LIMIT 1 OFFSET ?", (offset,))
    return str(row[0]) if row else None


def recorded_head(store: Store, chain: str) -> tuple[int, str] | None:
    """The head the store recorded for ``chain`` (a run's row, or the chain heads table)."""
    if chain == SYSTEM_CHAIN or chain.startswith("_"):
        row = store.read_one("SELECT last_seq, last_hash FROM chain_heads WHERE chain = ?", (chain,))
    else:
        row = store.read_one("SELECT last_seq, last_hash FROM runs WHERE id = ?", (chain,))
    return (int(row[0]), row[1]) if row else None


def run_heads(store: Store, run_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """``{run id: (last_seq, last_hash)}`` of the runs that exist among ``run_ids``."""
    if not run_ids:
        return {}
    marks = ", ".join("?" * len(run_ids))
    rows = store.read(f"SELECT id, last_seq, last_hash FROM runs WHERE id IN ({marks})", list(run_ids))
    return {id_: (int(seq), hash_) for id_, seq, hash_ in rows}


def prune_records(store: Store) -> list[str]:
    """The data (JSON text) of every ``audit.pruned`` event on the system chain, in order."""
    rows = store.read("SELECT data FROM events WHERE chain = ? AND type = 'audit.pruned' ORDER BY seq", (SYSTEM_CHAIN,))
    return [r[0] for r in rows]


def chains_since(store: Store, since: str) -> set[str]:
    """Chains with an event at or after ``since`` (plus the system chain if it has events)."""
    recent = {r[0] for r in store.read("SELECT DISTINCT chain FROM events WHERE at >= ?", (since,))}
    if store.read_one("SELECT 1 FROM events WHERE chain = ?", (SYSTEM_CHAIN,)):
        recent.add(SYSTEM_CHAIN)
    return recent


def runs_without_events(store: Store) -> list[str]:
    return [r[0] for r in store.read(
        "SELECT id FROM runs WHERE NOT EXISTS (SELECT 1 FROM events WHERE events.chain = runs.id) ORDER BY id"
    )]  # fmt: skip
