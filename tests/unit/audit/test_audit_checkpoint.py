"""Checkpoint files: signed, pinned, and refused when altered or signed by someone else."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from auditkit import make_run

from wflo._errors import UserError
from wflo.audit import generate_key, make_checkpoint, merkle_root, read_checkpoint, verify_checkpoint, write_checkpoint
from wflo.audit._checkpoint import _signed_bytes, load_private_key, load_public_key
from wflo.store import SYSTEM_CHAIN, open_store


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    pub = generate_key(tmp_path / "k.pem")
    assert pub.startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600
    with pytest.raises(UserError, match="never overwritten"):
        generate_key(tmp_path / "k.pem")


def test_checkpoint_round_trip_and_record(store_url: str, tmp_path: Path) -> None:
    generate_key(tmp_path / "k.pem")
    (tmp_path / "pub.pem").write_text(generate_key(tmp_path / "other.pem"))
    with open_store(store_url) as store:
        make_run(store, "r1")
        doc = write_checkpoint(store, tmp_path / "k.pem", tmp_path / "cp.json", by="user:auditor")
        assert doc["chains"] == [{"chain": "r1", "count": 8, "head": store.get_run("r1").last_hash}]
        assert doc["merkle_root"] == merkle_root([("r1", 8, store.get_run("r1").last_hash)])
        recorded = [e for e in store.events(SYSTEM_CHAIN) if e.type == "audit.checkpointed"]
        assert recorded and recorded[0].data["merkle_root"] == doc["merkle_root"]
        make_run(store, "r2")  # the database moves on: it still extends the checkpoint
        cp = read_checkpoint(tmp_path / "cp.json")
        assert verify_checkpoint(store, cp).ok
        own = load_public_key(tmp_path / "k.pem")
        assert verify_checkpoint(store, cp, own).ok and verify_checkpoint(store, cp, own).pinned
        wrong = verify_checkpoint(store, cp, load_public_key(tmp_path / "pub.pem"))
        assert not wrong.ok and "pinned public key" in str(wrong.problem)


def test_altered_checkpoint_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    generate_key(tmp_path / "k.pem")
    with open_store(sqlite_url) as store:
        make_run(store, "r1")
        doc = make_checkpoint(store, load_private_key(tmp_path / "k.pem"), by="x")
        assert verify_checkpoint(store, doc).ok
        lowered = json.loads(json.dumps(doc))
        lowered["chains"][0]["count"] = 5  # hide a later truncation
        result = verify_checkpoint(store, lowered)
        assert not result.signature_ok and "bad signature" in str(result.problem)
        flipped = dict(doc, signature=base64.b64encode(b"\0" * 64).decode())
        assert not verify_checkpoint(store, flipped).signature_ok
        # An attacker re-signs with their own key and swaps the embedded public key:
        generate_key(tmp_path / "evil.pem")
        evil = load_private_key(tmp_path / "evil.pem")
        forged = make_checkpoint(store, evil, by="eve")
        assert verify_checkpoint(store, forged).ok  # self-consistent: that is why --public-key pins
        refused = verify_checkpoint(store, forged, load_public_key(tmp_path / "k.pem"))
        assert not refused.ok and not refused.signature_ok
        # A signed document whose Merkle root does not match its chains is refused too.
        bad_root = dict(doc, merkle_root="0" * 64)
        bad_root["signature"] = base64.b64encode(evil.sign(_signed_bytes(bad_root))).decode()
        bad_root["public_key"] = forged["public_key"]
        bad_root["signature"] = base64.b64encode(evil.sign(_signed_bytes(bad_root))).decode()
        assert "Merkle root" in str(verify_checkpoint(store, bad_root).problem)


def test_merkle_root_is_order_independent_and_sensitive() -> None:
    leaves = [("a", 1, "x" * 64), ("b", 2, "y" * 64), ("c", 3, "z" * 64)]
    assert merkle_root(leaves) == merkle_root(list(reversed(leaves)))
    assert merkle_root(leaves) != merkle_root([*leaves[:2], ("c", 3, "w" * 64)])
    assert merkle_root(leaves) != merkle_root(leaves[:2])
    assert len(merkle_root([])) == 64


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read checkpoint"), ("not json", "is not JSON"), ('{"format": "x"}', "not a wflo checkpoint"),
     ('{"format": "wflo-checkpoint", "chains": [{}]}', "malformed")],
)  # fmt: skip
def test_unreadable_checkpoint_is_a_user_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "cp.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_checkpoint(path)
