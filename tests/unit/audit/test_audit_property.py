"""Property: any single-byte change in any hashed column of any event is found, at that event."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from auditkit import make_run
from hypothesis import given, settings
from hypothesis import strategies as st

from wflo.audit import verify_chain
from wflo.store import NewEvent, Store, open_store

COLUMNS = ("type", "at", "data", "prev_hash", "hash")
CHAINS = {"r1": 8, "system": 2}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, sqlite3.Connection]]:
    path = Path(tmp_path_factory.mktemp("prop")) / "wflo.db"
    with open_store(f"sqlite:///{path}") as store:
        make_run(store, "r1")
        store.append_system([NewEvent("budget.set", {"scope": "global", "usd": "5", "by": "user:ann", "note": "é"})])
        store.append_system([NewEvent("principal.granted", {"principal": "user:bo", "by": "user:ann"})])
        conn = sqlite3.connect(path, isolation_level=None)
        yield store, conn
        conn.close()


@settings(max_examples=100, deadline=None)
@given(
    chain=st.sampled_from(sorted(CHAINS)),
    row=st.integers(min_value=0, max_value=7),
    column=st.sampled_from(COLUMNS),
    where=st.floats(min_value=0, max_value=1, exclude_max=True),
    byte=st.integers(min_value=0x20, max_value=0x7E),
)
def test_any_single_byte_change_is_found(
    db: tuple[Store, sqlite3.Connection], chain: str, row: int, column: str, where: float, byte: int
) -> None:
    store, conn = db
    seq = row % CHAINS[chain] + 1
    (original,) = conn.execute(f"SELECT {column} FROM events WHERE chain = ? AND seq = ?", (chain, seq)).fetchone()
    raw = bytearray(original.encode())
    pos = int(where * len(raw))
    if raw[pos] == byte:
        byte = 0x21 if byte != 0x21 else 0x22
    if raw[pos] >= 0x80:  # keep the text valid UTF-8: replace the whole character
        start = pos
        while start > 0 and raw[start] & 0xC0 == 0x80:
            start -= 1
        end = start + 1
        while end < len(raw) and raw[end] & 0xC0 == 0x80:
            end += 1
        raw[start:end] = bytes([byte])
    else:
        raw[pos] = byte
    changed = raw.decode()
    assert changed != original
    conn.execute(f"UPDATE events SET {column} = ? WHERE chain = ? AND seq = ?", (changed, chain, seq))
    try:
        report = verify_chain(store, chain)
    finally:
        conn.execute(f"UPDATE events SET {column} = ? WHERE chain = ? AND seq = ?", (original, chain, seq))
    assert not report.ok
    assert report.seq == seq
    assert report.kind == ("link" if column == "prev_hash" else "hash")
    assert verify_chain(store, chain).ok


@settings(max_examples=100, deadline=None)
@given(
    chain=st.text(min_size=1, max_size=20),
    seq=st.integers(min_value=1, max_value=2**62),
    type_=st.text(max_size=20),
    at=st.text(max_size=30),
    data=st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=10), st.none()), max_size=4),
)
def test_verify_hasher_equals_link_hash(chain: str, seq: int, type_: str, at: str, data: dict[str, object]) -> None:
    from wflo.audit._verify import chain_hasher
    from wflo.store import GENESIS, canonical_json, link_hash

    data_json = canonical_json(data)
    assert chain_hasher(chain)(GENESIS, seq, type_, at, data_json) == link_hash(
        GENESIS, chain, seq, type_, at, data_json
    )
