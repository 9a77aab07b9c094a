"""``wflo.guards._tables``: the rate-limit table's migration and each query on it, on SQLite
and PostgreSQL; shared buckets refill on the store's clock, and workers share them."""

from __future__ import annotations

import hashlib
import inspect
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wflo.guards import _tables as tables
from wflo.guards._policies import SharedRateLimit
from wflo.guards._ratelimit import Bucket
from wflo.store import MIGRATIONS, Store, open_store

RELEASED = {"m004_rate_limits": "a3ceffa3bcb4e89558a27382f9b278a123029577cec04ed34eb624807ed85844"}


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    st = open_store(store_url)
    yield st
    st.close()


def test_the_migration_kept_here_is_the_released_one_in_its_place() -> None:
    m = tables.M004_RATE_LIMITS
    assert MIGRATIONS[3] is m
    assert hashlib.sha256(m.sql.encode()).hexdigest() == RELEASED[m.name] and m.dialect_sql == {}


def test_clock_is_the_stores(store: Store) -> None:
    a = store.write(lambda cur: tables.clock(store, cur))
    b = store.write(lambda cur: tables.clock(store, cur))
    assert abs(a - time.time()) < 60 and a <= b  # the database server runs on this machine here


def test_bucket_rows(store: Store) -> None:
    assert store.write(lambda cur: tables.lock_bucket(store, cur, "k")) is None
    assert tables.bucket(store, "k") is None
    # A key never used starts full...
    assert store.write(lambda cur: tables.lock_or_fill(store, cur, "k", capacity=60.0, now=100.0)) == Bucket(
        60.0, 100.0
    )
    store.write(lambda cur: tables.save_bucket(store, cur, "k", Bucket(2.5, 130.25)))
    # ...and only then: a second fill leaves what is in it.
    assert store.write(lambda cur: tables.lock_or_fill(store, cur, "k", capacity=60.0, now=200.0)) == Bucket(
        2.5, 130.25
    )
    assert store.write(lambda cur: tables.lock_bucket(store, cur, "k")) == Bucket(2.5, 130.25)
    assert tables.bucket(store, "k") == Bucket(2.5, 130.25)
    assert tables.bucket(store, "other") is None


def test_the_window_refills_on_the_store_clock(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = SharedRateLimit("provider:p", requests_per_minute=60, tokens_per_minute=None, max_wait=0)
    for _ in range(60):  # a minute's burst
        assert limit.try_take(store, 0) == 0.0
    wait = limit.try_take(store, 0)
    assert 0 < wait <= 1.0  # one request a second comes back
    # This process's clock jumps an hour ahead: the store's does not, so nothing refills early.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    assert limit.try_take(store, 0) > 0
    monkeypatch.undo()
    # Half a minute on the store's clock (the row moved back) refills half the bucket.
    now = store.write(lambda cur: tables.clock(store, cur))
    store.write(lambda cur: tables.save_bucket(store, cur, "provider:p#requests", Bucket(0.0, now - 30)))
    taken = 0
    while limit.try_take(store, 0) == 0.0:
        taken += 1
    assert 30 <= taken <= 32  # 30, and what the test's own seconds added


def test_tokens_taken_all_or_nothing_and_adjusted(store: Store) -> None:
    limit = SharedRateLimit("model:m", requests_per_minute=10, tokens_per_minute=1000, max_wait=0)
    assert limit.try_take(store, 900) == 0.0
    assert limit.try_take(store, 200) > 0  # not enough tokens: the request is not taken either
    requests = tables.bucket(store, "model:m#requests")
    assert requests is not None and requests.tokens == pytest.approx(9, abs=0.1)
    limit.adjust(store, -500)  # the call used 500 fewer than estimated: they come back
    tokens = tables.bucket(store, "model:m#tokens")
    assert tokens is not None and tokens.tokens == pytest.approx(600, abs=5)
    limit.adjust(store, 10_000)  # a debt, never above capacity on the way back
    tokens = tables.bucket(store, "model:m#tokens")
    assert tokens is not None and tokens.tokens < -9000
    SharedRateLimit("model:new", requests_per_minute=None, tokens_per_minute=1000, max_wait=0).adjust(store, 5)
    assert tables.bucket(store, "model:new#tokens") is None  # adjusting creates no bucket


def test_workers_share_one_bucket(store: Store) -> None:
    limit = SharedRateLimit("tool:t", requests_per_minute=30, tokens_per_minute=None, max_wait=0)
    taken: list[int] = []
    barrier = threading.Barrier(3)

    def worker() -> None:
        barrier.wait()
        taken.append(sum(1 for _ in range(20) if limit.try_take(store, 0) == 0.0))

    started = time.time()
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    refilled = (time.time() - started) * 30 / 60
    assert len(taken) == 3 and 30 <= sum(taken) <= 30 + refilled + 1, (taken, refilled)


def test_every_query_here_is_tried_here() -> None:
    source = Path(__file__).read_text()
    queries = [n for n, f in vars(tables).items() if inspect.isfunction(f) and f.__module__ == tables.__name__]
    assert queries and [n for n in queries if f"tables.{n}(" not in source] == []
