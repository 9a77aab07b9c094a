"""Prune deletes finished runs on the record; export writes files that its manifest pins."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from auditkit import admin, make_run

from wflo._errors import UserError
from wflo.audit import export, generate_key, make_checkpoint, prune, verify_all, verify_checkpoint
from wflo.audit._checkpoint import load_private_key
from wflo.store import GENESIS, SYSTEM_CHAIN, link_hash, open_store

OLD = "2020-01-01T00:00:00.000000Z"


def test_prune_then_verify_intact_and_recorded(store_url: str, tmp_path: Path) -> None:
    generate_key(tmp_path / "k.pem")
    with open_store(store_url) as store:
        make_run(store, "old-ok", at=OLD)
        make_run(store, "old-failed", calls=1, status="failed", at=OLD)
        make_run(store, "new")  # finished, but after the cut-off
        make_run(store, "old-running", finish=False, at=OLD)  # not finished: never pruned
        checkpoint = make_checkpoint(store, load_private_key(tmp_path / "k.pem"), by="x")
        if store.dialect == "postgresql":  # outside prune, the append-only trigger refuses deletes
            with pytest.raises(Exception, match="append-only"):
                store.write(lambda cur: cur.execute("DELETE FROM events WHERE chain = 'old-ok'"))
        result = prune(store, "2021-01-01T00:00:00.000000Z", by="user:ops")
        assert sorted(c for c, _, _ in result.pruned) == ["old-failed", "old-ok"]
        assert result.events == 8 + 4 and not result.skipped
        left = {r[0] for r in store.read("SELECT DISTINCT chain FROM events")}
        assert left == {"new", "old-running", SYSTEM_CHAIN}
        assert store.get_run("old-ok").status == "succeeded"  # runs rows stay
        reports = {r.chain: r for r in verify_all(store)}
        assert all(r.ok for r in reports.values()), [r.describe() for r in reports.values() if not r.ok]
        assert reports["old-ok"].pruned and reports["old-ok"].count == 8 and "pruned" in reports["old-ok"].describe()
        record = [e for e in store.events(SYSTEM_CHAIN) if e.type == "audit.pruned"]
        assert len(record) == 1 and record[0].data["by"] == "user:ops"
        assert {c["chain"]: c["count"] for c in record[0].data["chains"]} == {"old-ok": 8, "old-failed": 4}
        assert verify_checkpoint(store, checkpoint).ok  # pruned on purpose: not a truncation
        assert prune(store, "2021-01-01T00:00:00.000000Z", by="user:ops").pruned == []  # idempotent
        # A pruned run whose recorded head is then changed is reported.
        with admin(store_url) as db:
            db.run("UPDATE runs SET last_seq = 3 WHERE id = 'old-ok'")
        assert [(r.chain, r.kind) for r in verify_all(store) if not r.ok] == [("old-ok", "head")]


def test_prune_skips_a_chain_that_does_not_verify(store_url: str) -> None:
    with open_store(store_url) as store:
        make_run(store, "bad", at=OLD)
        make_run(store, "good", at=OLD)
        with admin(store_url) as db:
            db.run("UPDATE events SET data = replace(data, '\"i\":1', '\"i\":7') WHERE chain = 'bad'")
        result = prune(store, "2021-01-01T00:00:00.000000Z", by="x")
        assert [c for c, _, _ in result.pruned] == ["good"]
        assert [(r.chain, r.seq, r.kind) for r in result.skipped] == [("bad", 4, "hash")]
        assert len(store.events("bad")) == 8


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_manifest_hashes_match(store_url: str, tmp_path: Path, fmt: str) -> None:
    with open_store(store_url) as store:
        make_run(store, "r1")
        make_run(store, "r2", calls=1)
        out = tmp_path / "export"
        manifest = export(store, out, fmt=fmt, by="user:auditor")
        on_disk = json.loads((out / "manifest.json").read_text())
        assert on_disk == manifest and manifest["events"] == 8 + 4 and manifest["by"] == "user:auditor"
        for f in manifest["files"]:
            data = (out / f["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
        heads = {c["chain"]: (c["last_seq"], c["head"]) for c in manifest["chains"]}
        assert heads == {"r1": (8, store.get_run("r1").last_hash), "r2": (4, store.get_run("r2").last_hash)}
        # The export alone is enough to recompute every link.
        if fmt == "jsonl":
            rows = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        else:
            with (out / "events.csv").open(newline="") as fh:
                rows = list(csv.DictReader(fh))
        prev = {}
        for r in rows:
            p = prev.get(r["chain"], GENESIS)
            assert r["prev_hash"] == p
            assert link_hash(p, r["chain"], int(r["seq"]), r["type"], r["at"], r["data"]) == r["hash"]
            prev[r["chain"]] = r["hash"]
        recorded = [e for e in store.events(SYSTEM_CHAIN) if e.type == "audit.exported"]
        assert recorded[0].data["files"][0]["sha256"] == manifest["files"][0]["sha256"]
        assert recorded[0].data["manifest_sha256"] == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
        with pytest.raises(UserError, match="already holds an export"):
            export(store, out, fmt=fmt)
        one = export(store, tmp_path / "one", fmt=fmt, run_id="r2")
        assert one["events"] == 4 and [c["chain"] for c in one["chains"]] == ["r2"]


def test_export_pages_through_many_events(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wflo.audit import _export

    monkeypatch.setattr(_export, "PAGE", 7)
    with open_store(sqlite_url) as store:
        for i in range(5):
            make_run(store, f"r{i}", calls=i)
        seen: list[int] = []
        manifest = export(store, tmp_path / "x", on_progress=seen.append, since="2000-01-01T00:00:00.000000Z")
        assert manifest["events"] == sum(3 + i for i in range(5)) == sum(seen)
