"""``verify_all`` reads every chain in one streamed pass; it must find exactly what
verifying each chain alone finds, wherever the page and batch boundaries fall."""

from __future__ import annotations

import gc

import pytest
from auditkit import admin, make_run

from peaks import peak_bytes
from wflo.audit import _verify, verify_all, verify_chain
from wflo.store import NewEvent, Store, open_store


def _alone(store: Store) -> list[tuple[str, bool, int | None, str | None, int]]:
    chains = [r[0] for r in store.read("SELECT DISTINCT chain FROM events ORDER BY chain")]
    return [(r.chain, r.ok, r.seq, r.kind, r.count) for r in (verify_chain(store, c) for c in chains)]


def _all(store: Store) -> list[tuple[str, bool, int | None, str | None, int]]:
    return [(r.chain, r.ok, r.seq, r.kind, r.count) for r in verify_all(store)]


@pytest.mark.parametrize("page,batch", [(1, 1), (3, 2), (7, 500), (20000, 500)])
def test_one_pass_finds_what_each_chain_alone_finds(
    store_url: str, monkeypatch: pytest.MonkeyPatch, page: int, batch: int
) -> None:
    monkeypatch.setattr(_verify, "SCAN_PAGE", page)
    monkeypatch.setattr(_verify, "HEADS_BATCH", batch)
    with open_store(store_url) as store:
        for i, calls in enumerate([0, 1, 5, 2, 9]):
            make_run(store, f"r{i}", calls=calls)
        # A time that JSON must escape (a forged or foreign row) is hashed the slow, exact way.
        make_run(store, "r-odd-at", calls=2, at='2026-01-01T00:00:00.000000Z "\\ é')
        store.append_system([NewEvent("budget.set", {"scope": "global", "usd": "5"})])
        store.append_chain("_other", [NewEvent("x", {"i": i}) for i in range(4)])
        assert all(ok for _, ok, *_ in _all(store))
        assert _all(store) == _alone(store)
        with admin(store_url) as db:
            db.run("UPDATE events SET data = replace(data, '\"i\":1', '\"i\":7') WHERE chain = 'r2' AND seq = 4")
            db.run("DELETE FROM events WHERE chain = 'r4' AND seq = 6")
            db.run("UPDATE runs SET last_seq = 99 WHERE id = 'r3'")
            db.run("UPDATE events SET data = '{}' WHERE chain = '_other' AND seq = 4")
        got = _all(store)
        assert got == _alone(store)
        assert [(c, s, k) for c, ok, s, k, _ in got if not ok] == [
            ("_other", 4, "hash"), ("r2", 4, "hash"), ("r3", 6, "head"), ("r4", 6, "gap"),
        ]  # fmt: skip


def test_a_run_whose_events_all_vanished_is_still_reported(store_url: str) -> None:
    with open_store(store_url) as store:
        make_run(store, "r-gone", calls=1)
        make_run(store, "r-here", calls=1)
        with admin(store_url) as db:
            db.run("DELETE FROM events WHERE chain = 'r-gone'")
        broken = [(r.chain, r.kind) for r in verify_all(store) if not r.ok]
        assert broken == [("r-gone", "head")]


def test_the_scan_pauses_the_garbage_collector_and_restores_it(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    scan_links = _verify._tables.scan_links

    def spy(*args: object) -> object:
        seen.append(gc.isenabled())
        return scan_links(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_verify._tables, "scan_links", spy)
    with open_store(sqlite_url) as store:
        make_run(store, "r1", calls=2)
        try:
            for enabled in (True, False):
                gc.enable() if enabled else gc.disable()
                assert all(r.ok for r in verify_all(store, workers=1))
                assert gc.isenabled() is enabled
        finally:
            gc.enable()
    assert seen and not any(seen)


def test_verifying_every_chain_holds_a_batch_of_events_not_the_history(store_url: str) -> None:
    # tracemalloc counts what Python holds: all the events read at once, against the scan.
    with open_store(store_url) as store:
        for i in range(40):
            make_run(store, f"r{i:02d}", calls=500)
        everything = peak_bytes(lambda: store.read("SELECT chain, seq, type, at, data, prev_hash, hash FROM events"))
        scanned: list[int] = []
        held = peak_bytes(lambda: scanned.append(sum(r.count for r in verify_all(store, workers=1))))
        assert scanned == [40 * 503]
        assert held < everything / 4, (held, everything)
