"""The rate-limit table: its DDL and every query on it.

``rate_buckets`` holds one token bucket per key (``provider:openai#requests``,
``model:gpt-4o#tokens``): what is in it and when that was computed, in seconds since the epoch
on the store's clock. Every process on the store takes from the same rows, in a transaction
that locks them, so a limit holds across workers. The migration that creates the table was
released in the store's list and is kept here verbatim (same name, same SQL);
``wflo.store._migrations.MIGRATIONS`` still decides its order.

Circuit breakers keep no table: a breaker reacts to what its own process sees.
"""

from __future__ import annotations

from typing import Any

from ..store import Migration, Store, parse_iso
from ._ratelimit import Bucket

M004_RATE_LIMITS = Migration(
    "m004_rate_limits",
    """
CREATE TABLE rate_buckets (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
)
""",
)


def clock(store: Store, cur: Any) -> float:
    """Now, in seconds since the epoch, on the store's clock (read in ``cur``'s transaction).

    Buckets refill on this one clock, so a worker whose own clock runs ahead cannot refill a
    shared bucket early (nor one running late starve it)."""
    return parse_iso(store.now(cur=cur)).timestamp()


def lock_bucket(store: Store, cur: Any, key: str) -> Bucket | None:
    """The bucket ``key``, its row locked until the transaction ends (``None``: never used)."""
    store.execute(cur, f"SELECT tokens, updated_at FROM rate_buckets WHERE key = ?{store.for_update}", (key,))
    row = cur.fetchone()
    return Bucket(float(row[0]), float(row[1])) if row else None


def lock_or_fill(store: Store, cur: Any, key: str, *, capacity: float, now: float) -> Bucket:
    """The bucket ``key``, its row locked; a key never used starts full (``capacity`` at ``now``).

    The row is created first (or left as it is) so that two processes taking from a new key at
    once lock the same row rather than both seeing none."""
    store.execute(
        cur, "INSERT INTO rate_buckets (key, tokens, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING",
        (key, capacity, now),
    )  # fmt: skip
    bucket = lock_bucket(store, cur, key)
    assert bucket is not None, key
    return bucket


def save_bucket(store: Store, cur: Any, key: str, bucket: Bucket) -> None:
    """Write the bucket ``key`` back (its row locked by :func:`lock_bucket` in ``cur``)."""
    store.execute(
        cur, "UPDATE rate_buckets SET tokens = ?, updated_at = ? WHERE key = ?", (bucket.tokens, bucket.updated_at, key)
    )


def bucket(store: Store, key: str) -> Bucket | None:
    """The bucket ``key`` as last written (no lock; for reports and tests)."""
    row = store.read_one("SELECT tokens, updated_at FROM rate_buckets WHERE key = ?", (key,))
    return Bucket(float(row[0]), float(row[1])) if row else None
