"""The store contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from wflo._errors import ConfigurationError, LeaseLost, RunNotFoundError, SchemaVersionError
from wflo.audit import verify_chain
from wflo.store import GENESIS, MIGRATIONS, SCHEMA_VERSION, Head, NewEvent, event_hash, open_store


def test_migrate_is_idempotent_and_check_passes(store_url: str) -> None:
    store = open_store(store_url, verify=False)
    try:
        assert store.schema_version() == 0
        with pytest.raises(SchemaVersionError, match="wflo db migrate"):
            store.check()
        assert store.migrate() == [m.name for m in MIGRATIONS]
        assert store.migrate() == []
        assert store.check() == SCHEMA_VERSION
    finally:
        store.close()


def test_newer_schema_is_refused_with_the_fix(store_url: str) -> None:
    store = open_store(store_url)
    try:
        store._write("UPDATE wflo_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    finally:
        store.close()
    with pytest.raises(SchemaVersionError, match="upgrade wflo"):
        open_store(store_url)


def test_concurrent_migrations_apply_once(store_url: str) -> None:
    errors: list[BaseException] = []

    def go() -> None:
        try:
            open_store(store_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = open_store(store_url)
    assert store.check() == SCHEMA_VERSION
    store.close()


def test_events_form_a_verifiable_hash_chain(store_url: str) -> None:
    with open_store(store_url) as store:
        run, created = store.create_run(run_id="r1", workflow="w", input={"a": 1.5, "é": [1, None]}, owner="me")
        assert created
        head = Head(run.last_seq, run.last_hash)
        head = store.append(
            "r1",
            head,
            [NewEvent("call.completed", {"call": "1", "output": {"z": 1, "a": 2}}), NewEvent("x", {})],
            owner="me",
        )
        events = store.events("r1")
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert events[0].prev_hash == GENESIS
        for prev, ev in itertools.pairwise(events):
            assert ev.prev_hash == prev.hash
        assert events[2].hash == event_hash(
            events[1].hash, "r1", 3, events[2].type, events[2].at, {"call": "1", "output": {"a": 2, "z": 1}}
        )
        assert verify_chain(store, "r1").ok
        assert store.get_run("r1").last_hash == head.hash


def test_create_run_is_idempotent(store_url: str) -> None:
    with open_store(store_url) as store:
        a, created_a = store.create_run(run_id="same", workflow="w", input={})
        b, created_b = store.create_run(run_id="same", workflow="w", input={})
        assert created_a and not created_b and a.id == b.id
        assert len(store.events("same")) == 1


def test_append_is_fenced_on_owner_and_head(store_url: str) -> None:
    with open_store(store_url) as store:
        run, _ = store.create_run(run_id="f", workflow="w", input={}, owner="alice")
        head = Head(run.last_seq, run.last_hash)
        with pytest.raises(LeaseLost):
            store.append("f", head, [NewEvent("x", {})], owner="mallory")
        new = store.append("f", head, [NewEvent("x", {})], owner="alice")
        with pytest.raises(LeaseLost):  # a second writer extending the same link
            store.append("f", head, [NewEvent("y", {})], owner="alice")
        assert store.get_run("f").last_seq == new.seq == 3


def test_claim_next_gives_each_run_to_exactly_one_claimer(store_url: str) -> None:
    with open_store(store_url) as store:
        for i in range(30):
            store.create_run(run_id=f"q{i:02d}", workflow="w", input={})
    claimed: dict[str, list[str]] = {}
    lock = threading.Lock()

    def claimer(name: str) -> None:
        with open_store(store_url) as s:
            while True:
                run = s.claim_next(name, 30)
                if run is None:
                    return
                with lock:
                    claimed.setdefault(run.id, []).append(name)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"q{i:02d}" for i in range(30)]
    assert all(len(v) == 1 for v in claimed.values())


def test_expired_lease_is_recoverable_and_heartbeat_keeps_it(store_url: str) -> None:
    with open_store(store_url) as store:
        store.create_run(run_id="l1", workflow="w", input={}, owner="a", lease_seconds=0.2)
        store.create_run(run_id="l2", workflow="w", input={}, owner="b", lease_seconds=0.2)
        assert store.claim_next("c", 5) is None
        held = store.heartbeat("b", ["l2"], 30)
        assert held == {"l2": False}
        time.sleep(0.3)
        got = store.claim_next("c", 5)
        assert got is not None and got.id == "l1" and got.attempts == 2
        assert store.claim_next("c", 5) is None  # l2 is still held by b
        assert store.heartbeat("a", ["l1"], 30) == {}  # a lost l1


def test_waiting_run_is_claimable_when_woken(store_url: str) -> None:
    with open_store(store_url) as store:
        run, _ = store.create_run(run_id="wt", workflow="w", input={}, owner="a")
        store.append(
            "wt",
            Head(run.last_seq, run.last_hash),
            [NewEvent("run.waiting", {})],
            owner="a",
            status="waiting",
            release=True,
        )
        assert store.claim_next("b", 5) is None
        store.set_wake("wt", "2000-01-01T00:00:00.000000Z")
        got = store.claim_next("b", 5)
        assert got is not None and got.id == "wt" and got.status == "running"


def test_system_chain_concurrent_appends_stay_linked(store_url: str) -> None:
    def go(n: int) -> None:
        with open_store(store_url) as s:
            for i in range(10):
                s.append_system([NewEvent("config.changed", {"writer": n, "i": i})])

    threads = [threading.Thread(target=go, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open_store(store_url) as store:
        report = verify_chain(store, "system")
        assert report.ok and report.count == 40


def test_find_run_by_prefix_and_unknown(store_url: str) -> None:
    with open_store(store_url) as store:
        store.create_run(run_id="abcdef-1", workflow="w", input={})
        store.create_run(run_id="abcxyz-2", workflow="w", input={})
        assert store.find_run("abcd").id == "abcdef-1"
        with pytest.raises(RunNotFoundError):
            store.find_run("abc")  # ambiguous and short
        with pytest.raises(RunNotFoundError):
            store.find_run("nope-nope")


def test_bad_urls_are_clear_errors(tmp_path: object) -> None:
    with pytest.raises(ConfigurationError, match="unsupported database URL"):
        open_store("mysql://x")
    with pytest.raises(ConfigurationError, match="names no database file"):
        open_store("sqlite:///:memory:")
