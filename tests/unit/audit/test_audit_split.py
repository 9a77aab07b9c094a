"""``verify_all`` splits the pass over processes by chain: the split must find exactly what
one process finds, wherever the damage is, and a child that cannot run changes nothing."""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import pytest
from auditkit import admin, make_run

from wflo.audit import _verify, verify_all, verify_chain
from wflo.store import open_store


def _broken(reports: list[Any]) -> list[tuple[str, int | None, str | None]]:
    return [(r.chain, r.seq, r.kind) for r in reports if not r.ok]


def _fill(store: Any) -> None:
    for name in ("r-a", "r-b", "r-c"):
        make_run(store, name, calls=150)  # 153 events each: the cut falls on r-b


def test_the_cut_falls_between_chains(store_url: str) -> None:
    with open_store(store_url) as store:
        _fill(store)
        assert _verify._split(store, 2) == [("", "r-b"), ("r-b", None)]
        assert _verify._split(store, 1) == [("", None)]
        assert _verify._split(store, None) == [("", None)]  # too few events to be worth a process


def test_a_tampered_row_mid_chain_is_found_by_the_child(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    here: list[tuple[str, str | None]] = []
    scan = _verify._scan

    def spy(store: Any, lo: str = "", below: str | None = None) -> Any:
        here.append((lo, below))
        return scan(store, lo, below)

    with open_store(store_url) as store:
        _fill(store)
        alone = verify_all(store, workers=1)
        assert all(r.ok for r in alone) and len(alone) == 3
        with admin(store_url) as db:
            # Content changed in the middle of the chain the child verifies, a link broken in
            # the parent's, a forged seq 0 at the very start of the child's range.
            db.run("UPDATE events SET data = replace(data, '\"i\":77', '\"i\":78') WHERE chain = 'r-b' AND seq = 80")
            db.run("UPDATE events SET prev_hash = ? WHERE chain = 'r-a' AND seq = 40", ("f" * 64,))
            db.run("UPDATE events SET seq = 0 WHERE chain = 'r-c' AND seq = 1")
        monkeypatch.setattr(_verify, "_scan", spy)
        split = verify_all(store, workers=2)
        assert here == [("", "r-b")]  # the parent did only its own range: the child ran
        monkeypatch.setattr(_verify, "_scan", scan)
        assert split == verify_all(store, workers=1)
        assert _broken(split) == [("r-a", 40, "link"), ("r-b", 80, "hash"), ("r-c", 1, "gap")]


def test_a_child_that_cannot_run_is_replaced_by_the_parent(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_store(store_url) as store:
        _fill(store)
        with admin(store_url) as db:
            db.run("UPDATE events SET data = '{}' WHERE chain = 'r-c' AND seq = 100")
        expected = verify_all(store, workers=1)
        for python in ("/nonexistent/python", "/bin/false"):
            monkeypatch.setattr(sys, "executable", python)
            assert verify_all(store, workers=2) == expected
        assert _broken(expected) == [("r-c", 100, "hash")]


@pytest.mark.parametrize("page", [1, 20000])
def test_forged_columns_of_another_type_are_reported_not_raised(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    # SQLite keeps whatever type a row is given: a time that is a number, a seq that is text
    # (with pages of one row, the key of the next page).
    monkeypatch.setattr(_verify, "SCAN_PAGE", page)
    with open_store(sqlite_url) as store:
        for name in ("r-a", "r-b", "r-c"):
            make_run(store, name, calls=3)
        with admin(sqlite_url) as db:
            db.run("UPDATE events SET at = 5 WHERE chain = 'r-a' AND seq = 2")
            db.run("UPDATE events SET seq = 'x' WHERE chain = 'r-b' AND seq = 6")
            db.run("UPDATE events SET type = X'00' WHERE chain = 'r-c' AND seq = 3")
        for workers in (1, 2):
            assert _broken(verify_all(store, workers=workers)) == [
                ("r-a", 2, "hash"),
                ("r-b", 6, "gap"),
                ("r-c", 3, "hash"),
            ]


@pytest.mark.parametrize(
    "column,value,hashed",
    [("data", "X'7b7d'", "b'{}'"), ("type", "X'78'", "b'x'"), ("at", "X'3030'", "b'00'")],
)
def test_a_forged_column_type_hashed_as_the_fast_path_would_print_it_is_still_broken(
    sqlite_url: str, column: str, value: str, hashed: str
) -> None:
    # The last event rewritten with a text column as a BLOB (SQLite keeps it) and a hash over
    # that value as Python prints it (and the run's head to match): the one-pass scan must not
    # accept what verifying the chain alone rejects (a value that is not text is never hashed).
    with open_store(sqlite_url) as store:
        head = make_run(store, "r-x", calls=5)
        with admin(sqlite_url) as db:
            seq, type_, at, data, prev = db.run(
                "SELECT seq, type, at, data, prev_hash FROM events WHERE chain = 'r-x' AND seq = ?", (head.seq,)
            )[0]
            parts = {"at": json.dumps(at), "type": json.dumps(type_), "data": data} | {column: hashed}
            text = (
                f'{prev}{{"at":{parts["at"]},"chain":"r-x","data":{parts["data"]},"seq":{seq},"type":{parts["type"]}}}'
            )
            forged = hashlib.sha256(text.encode()).hexdigest()
            db.run(
                f"UPDATE events SET {column} = {value}, hash = ? WHERE chain = 'r-x' AND seq = ?", (forged, head.seq)
            )
            db.run("UPDATE runs SET last_hash = ? WHERE id = 'r-x'", (forged,))
        alone = verify_chain(store, "r-x")
        assert not alone.ok and alone.seq == head.seq
        for workers in (1, 2):
            assert _broken(verify_all(store, workers=workers)) == [("r-x", head.seq, alone.kind)]


def test_behind_a_transaction_pooler_the_child_is_told(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    urls: list[str] = []
    start = _verify._Child.__init__

    def spy(self: Any, url: str, lo: str, below: str | None) -> None:
        urls.append(url)
        start(self, url, lo, below)

    monkeypatch.setattr(_verify._Child, "__init__", spy)
    with open_store(pg_url + "&pooler=transaction") as store:
        _fill(store)
        assert all(r.ok for r in verify_all(store, workers=2))
    assert len(urls) == 1 and urls[0].endswith("pooler=transaction")


def test_a_connection_lost_mid_scan_is_replaced_and_the_scan_goes_on(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server ends the stream's connection after its first batch (a restart, an operator's
    # pg_terminate_backend): the scan opens a new stream after the last key it verified and
    # finds exactly what an undisturbed scan finds, damage included.
    import uuid

    import psycopg

    name = f"verify_{uuid.uuid4().hex[:10]}"
    monkeypatch.setattr(_verify, "SCAN_PAGE", 50)
    opened: list[object] = []
    scan_links = _verify._tables.scan_links

    def killing(*args: Any) -> Any:
        stream = scan_links(*args)
        opened.append(args[-1])
        if len(opened) == 1:
            real = stream.batches

            def batches() -> Any:
                for i, batch in enumerate(real()):
                    yield batch
                    if i == 0:
                        with psycopg.connect(pg_url, autocommit=True) as admin:
                            admin.execute(
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
                                "AND state LIKE 'idle in transaction%%'",
                                (name,),
                            )

            stream.batches = batches
        return stream

    with open_store(f"{pg_url}&application_name={name}") as store:
        _fill(store)
        with admin(pg_url) as db:
            db.run("UPDATE events SET data = '{}' WHERE chain = 'r-b' AND seq = 100")
        expected = verify_all(store, workers=1)
        monkeypatch.setattr(_verify._tables, "scan_links", killing)
        assert verify_all(store, workers=1) == expected
    assert opened == [None, ("r-a", 50)]  # the second stream went on after the first batch
    assert _broken(expected) == [("r-b", 100, "hash")]
