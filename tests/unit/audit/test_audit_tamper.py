"""Tampering with the history is found, on both stores; only a checkpoint finds a consistent rewrite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from auditkit import admin, make_run

from wflo.audit import generate_key, make_checkpoint, verify_all, verify_checkpoint
from wflo.audit._checkpoint import load_private_key
from wflo.store import NewEvent, Store, open_store


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as st:
        make_run(st, "r1")  # seq 1 created, 2 started, 3..7 calls (i = 0..4), 8 completed
        make_run(st, "r2", calls=2)
        st.append_system([NewEvent("budget.set", {"scope": "global", "usd": "5", "by": "user:ann"})])
        st.append_system([NewEvent("principal.granted", {"principal": "user:bo", "role": "finance", "by": "user:ann"})])
        yield st


@pytest.fixture
def checkpoint(store: Store, tmp_path: Path) -> dict[str, object]:
    generate_key(tmp_path / "key.pem")
    return make_checkpoint(store, load_private_key(tmp_path / "key.pem"), by="user:auditor")


def broken(store: Store) -> list[tuple[str, int | None, str | None]]:
    return [(r.chain, r.seq, r.kind) for r in verify_all(store) if not r.ok]


def test_intact_history_verifies(store: Store, checkpoint: dict[str, object]) -> None:
    assert broken(store) == []
    result = verify_checkpoint(store, checkpoint)
    assert result.ok and result.chains == 3


def test_edited_field_is_found(store: Store, store_url: str) -> None:
    with admin(store_url) as db:
        db.run("UPDATE events SET data = replace(data, '\"i\":2', '\"i\":9') WHERE chain = 'r1' AND seq = 5")
    assert broken(store) == [("r1", 5, "hash")]


def test_edited_system_event_is_found(store: Store, store_url: str) -> None:
    with admin(store_url) as db:
        db.run("UPDATE events SET data = replace(data, 'user:ann', 'user:eve') WHERE chain = 'system' AND seq = 1")
    assert broken(store) == [("system", 1, "hash")]


def test_deleted_middle_row_is_a_gap(store: Store, store_url: str) -> None:
    with admin(store_url) as db:
        db.run("DELETE FROM events WHERE chain = 'r1' AND seq = 4")
    assert broken(store) == [("r1", 4, "gap")]


def test_swapped_rows_break_the_link(store: Store, store_url: str) -> None:
    with admin(store_url) as db:
        db.run("UPDATE events SET seq = -1 WHERE chain = 'r1' AND seq = 4")
        db.run("UPDATE events SET seq = 4 WHERE chain = 'r1' AND seq = 5")
        db.run("UPDATE events SET seq = 5 WHERE chain = 'r1' AND seq = -1")
    assert broken(store) == [("r1", 4, "link")]


def test_dropped_tail_is_found_by_the_recorded_head(store: Store, store_url: str) -> None:
    with admin(store_url) as db:
        db.run("DELETE FROM events WHERE chain = 'r1' AND seq >= 7")
    assert broken(store) == [("r1", 7, "head")]


def test_dropped_tail_with_head_moved_back_only_the_checkpoint_sees(
    store: Store, store_url: str, checkpoint: dict[str, object]
) -> None:
    with admin(store_url) as db:
        db.run("DELETE FROM events WHERE chain = 'r1' AND seq >= 7")
        db.set_run_head("r1", 6, db.hash_at("r1", 6))
        db.run("UPDATE runs SET status = 'running', output = NULL WHERE id = 'r1'")  # as if it never ended
        db.run("DELETE FROM events WHERE chain = 'system' AND seq >= 2")
        db.set_run_head("system", 1, db.hash_at("system", 1))
    assert broken(store) == []  # consistent: the chains alone cannot tell
    result = verify_checkpoint(store, checkpoint)
    assert result.signature_ok and not result.ok
    assert [(r.chain, r.seq, r.kind) for r in result.reports] == [("r1", 7, "truncated"), ("system", 2, "truncated")]
    assert "r1" in result.reports[0].describe() and "8 events" in result.reports[0].describe()


def test_whole_chain_rewrite_only_the_checkpoint_sees(
    store: Store, store_url: str, checkpoint: dict[str, object]
) -> None:
    with admin(store_url) as db:
        db.run("UPDATE events SET data = replace(data, '\"i\":0', '\"i\":100') WHERE chain = 'r2' AND seq = 3")
        seq, head = db.rehash_from("r2", 3)
        db.set_run_head("r2", seq, head)
    assert broken(store) == []
    result = verify_checkpoint(store, checkpoint)
    assert [(r.chain, r.seq, r.kind) for r in result.reports] == [("r2", 5, "rewritten")]


def test_deleted_chain_without_prune_is_missing(store: Store, store_url: str, checkpoint: dict[str, object]) -> None:
    with admin(store_url) as db:
        db.run("DELETE FROM events WHERE chain = 'r2'")
    assert broken(store) == [("r2", 1, "head")]  # its first event is gone
    assert [(r.chain, r.seq, r.kind) for r in verify_checkpoint(store, checkpoint).reports] == [("r2", 5, "missing")]


def test_checkpoint_refused_on_a_broken_store(store: Store, store_url: str, tmp_path: Path) -> None:
    from wflo import _errors

    with admin(store_url) as db:
        db.run("DELETE FROM events WHERE chain = 'r1' AND seq = 4")
    generate_key(tmp_path / "k.pem")
    with pytest.raises(_errors.ChainBrokenError, match="r1"):
        make_checkpoint(store, load_private_key(tmp_path / "k.pem"), by="x")
