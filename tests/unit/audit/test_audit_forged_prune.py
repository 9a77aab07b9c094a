"""Issue 14 finding 2: a run deleted under a forged prune record must not pass a pinned checkpoint.

Someone with write access to the database (on SQLite, whoever can write the file; on
PostgreSQL, the tables' owner) deleted one run's events and its ``runs`` row and appended an
``audit.pruned`` record; ``verify --checkpoint cp.json --public-key k.pub`` printed "intact …
signature valid" and exited 0, because checkpoint verification read prune records without the
pinned key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from auditkit import admin, make_run

from wflo.audit import generate_key, read_checkpoint, verify_checkpoint, write_checkpoint
from wflo.audit._checkpoint import load_private_key, load_public_key, sign_record
from wflo.store import NewEvent, open_store


def _forge(store_url: str, victim: str, signer: object | None) -> None:
    with open_store(store_url) as store:
        run = store.get_run(victim)
        record = {"by": "user:mallory", "before": "2999-01-01", "events": run.last_seq,
                  "chains": [{"chain": victim, "count": run.last_seq, "head": run.last_hash}]}  # fmt: skip
        store.append_system([NewEvent("audit.pruned", sign_record(record, signer) if signer else record)])
    with admin(store_url) as db:  # the owner's / file owner's way past the trigger
        db.run("DELETE FROM events WHERE chain = ?", (victim,))
        db.run("DELETE FROM runs WHERE id = ?", (victim,))


@pytest.mark.parametrize("forgery", ["unsigned", "signed by another key"])
def test_a_run_deleted_under_a_forged_prune_fails_the_pinned_checkpoint(
    store_url: str, tmp_path: Path, forgery: str
) -> None:
    (tmp_path / "pub.pem").write_text(generate_key(tmp_path / "key.pem"))
    generate_key(tmp_path / "mallory.pem")
    with open_store(store_url) as store:
        make_run(store, "kept")
        make_run(store, "victim")
        write_checkpoint(store, tmp_path / "key.pem", tmp_path / "cp.json", by="user:auditor")
    mallory = load_private_key(tmp_path / "mallory.pem") if forgery != "unsigned" else None
    _forge(store_url, "victim", mallory)

    doc = read_checkpoint(tmp_path / "cp.json")
    with open_store(store_url) as store:
        result = verify_checkpoint(store, doc, load_public_key(tmp_path / "pub.pem"))
        assert result.signature_ok and not result.ok
        assert [(r.chain, r.kind) for r in result.reports] == [("victim", "unsigned-prune")]
        assert "not signed by the pinned key" in result.reports[0].describe()

        # The forged record itself names the run: verify with the key catches it without a checkpoint.
        from wflo.audit import verify_all

        broken = [r for r in verify_all(store, trusted=load_public_key(tmp_path / "pub.pem")) if not r.ok]
        assert [(r.chain, r.kind) for r in broken] == [("victim", "unsigned-prune")]

    env = {"WFLO_DATABASE_URL": store_url, "WFLO_PRINCIPAL": "user:auditor", "PYTHONPATH": ":".join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "audit", "verify", "--checkpoint", "cp.json", "--public-key", "pub.pem"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 10, (proc.stdout, proc.stderr)
    assert "victim" in proc.stderr and "kept" not in proc.stderr


def test_a_signed_prune_after_the_checkpoint_still_passes(store_url: str, tmp_path: Path) -> None:
    from wflo.audit import prune

    (tmp_path / "pub.pem").write_text(generate_key(tmp_path / "key.pem"))
    with open_store(store_url) as store:
        make_run(store, "old", at="2020-01-01T00:00:00.000000Z")
        doc = write_checkpoint(store, tmp_path / "key.pem", tmp_path / "cp.json", by="user:auditor")
        result = prune(store, "2021-01-01T00:00:00.000000Z", by="user:auditor",
                       private_key=load_private_key(tmp_path / "key.pem"))  # fmt: skip
        assert [c for c, _, _ in result.pruned] == ["old"]
        assert verify_checkpoint(store, doc, load_public_key(tmp_path / "pub.pem")).ok
