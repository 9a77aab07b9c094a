"""The retention policy: `audit prune` refuses a cut-off inside it (library and CLI, both stores);
an override needs a reason and is recorded before anything is deleted; the pack shows both."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from compliancekit import clock, iso

from wflo import _config
from wflo._errors import RetentionError, UserError
from wflo.audit import prune
from wflo.compliance import build_evidence, check_retention, earliest_cutoff
from wflo.store import SYSTEM_CHAIN, Head, NewEvent, Store, now_iso, open_store


def _finished_run(store: Store, run_id: str, at: datetime) -> None:
    with clock(at):
        run, _ = store.create_run(run_id=run_id, workflow="wf", input={}, owner="w1")
        store.append(run_id, Head(run.last_seq, run.last_hash), [NewEvent("run.completed", {})], owner="w1",
                     status="succeeded", finish=True)  # fmt: skip


def _events(store: Store, chain: str) -> int:
    row = store.read_one("SELECT COUNT(*) FROM events WHERE chain = ?", (chain,))
    return int(row[0]) if row else 0


def test_prune_inside_retention_is_refused_and_an_override_recorded(store_url: str) -> None:
    now = datetime.now(UTC)
    with open_store(store_url) as store:
        _finished_run(store, "old", now - timedelta(days=400))
        _finished_run(store, "recent", now - timedelta(days=30))
        cut = iso(now - timedelta(days=10))
        with pytest.raises(RetentionError) as err:
            prune(store, cut, by="user:ops")
        assert err.value.days == 183 and "183-day retention" in str(err.value)
        assert _events(store, "recent") == 3 and _events(store, "old") == 3  # nothing deleted, not even the old run
        assert not [e for e in store.events(SYSTEM_CHAIN) if e.type.startswith("audit.")]
        # a cut-off older than the retention period is fine
        assert [c for c, _n, _h in prune(store, iso(now - timedelta(days=200)), by="user:ops").pruned] == ["old"]
        with pytest.raises(UserError, match="needs a reason"):
            prune(store, cut, by="user:ops", retention_override="  ")
        result = prune(store, cut, by="user:ops", retention_override="court order 2026-17: erase test data")
        assert [c for c, _n, _h in result.pruned] == ["recent"]
        kinds = [(e.type, e.data.get("by")) for e in store.events(SYSTEM_CHAIN)]
        assert kinds[-2:] == [("audit.retention_overridden", "user:ops"), ("audit.pruned", "user:ops")]
        override = next(e for e in store.events(SYSTEM_CHAIN) if e.type == "audit.retention_overridden")
        assert override.data["reason"].startswith("court order") and override.data["retention_days"] == 183
        # the pack's record-keeping section lists both prunes and the override, with who did them
        ev = build_evidence(store, since=iso(now - timedelta(days=1)), until=now_iso())
        (rk,) = [s for s in ev["sections"] if s["key"] == "record_keeping"]
        assert rk["figures"]["prunes_on_record"] == 2 and rk["figures"]["retention_overrides"] == 1
        tables = {t["title"]: t["rows"] for t in rk["tables"]}
        assert [r[1] for r in tables["Prunes on record"]] == ["user:ops", "user:ops"]
        assert [r[5] for r in tables["Prunes on record"]] == ["unsigned", "unsigned"]
        assert rk["figures"]["prunes_not_signed_by_audit_key"] == 2 and rk["figures"]["history_intact"]
        assert any("not signed by the audit key" in note for note in rk["notes"])
        assert tables["Retention overrides"][0][4].startswith("court order")


def test_retention_days_setting_and_zero(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_store(sqlite_url) as store:
        _finished_run(store, "r", datetime.now(UTC) - timedelta(days=40))
        monkeypatch.setenv("WFLO_RETENTION_DAYS", "30")
        _config.reset()
        assert _config.settings().retention_days == 30
        assert [c for c, *_ in prune(store, iso(datetime.now(UTC) - timedelta(days=35)), by="x").pruned] == ["r"]
        with pytest.raises(RetentionError):
            check_retention(store, now_iso(), by="x", days=30)
        check_retention(store, now_iso(-1), by="x", days=0)  # 0: no retention
    monkeypatch.setenv("WFLO_RETENTION_DAYS", "six months")
    _config.reset()
    from wflo._errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="WFLO_RETENTION_DAYS"):
        _config.settings()


def test_retention_uses_the_database_clock_on_postgresql(pg_url: str) -> None:
    """A process whose clock runs a year fast cannot move the retention boundary on PostgreSQL."""
    with open_store(pg_url) as store:
        real = earliest_cutoff(store, 183)
        with clock(datetime.now(UTC) + timedelta(days=365)):
            import wflo.compliance._retention as retention

            mp = pytest.MonkeyPatch()
            mp.setattr(retention, "now_iso", lambda offset_seconds=0.0: iso(datetime.now(UTC) + timedelta(days=365)))
            try:
                skewed = earliest_cutoff(store, 183)
            finally:
                mp.undo()
        assert abs((datetime.fromisoformat(skewed[:-1]) - datetime.fromisoformat(real[:-1])).total_seconds()) < 60


def test_cli_refuses_before_asking_and_records_an_override(sqlite_url: str, tmp_path: Path) -> None:
    with open_store(sqlite_url) as store:
        _finished_run(store, "r", datetime.now(UTC) - timedelta(days=5))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    base = [sys.executable, "-m", "wflo.cli", "-d", sqlite_url, "audit", "prune", "--before", "1d"]
    refused = subprocess.run([*base, "--yes"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert refused.returncode == 2 and "retention" in refused.stderr and "--override-retention" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 2 and "Traceback" not in refused.stderr
    done = subprocess.run([*base, "--yes", "--override-retention", "test data"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and "pruned 1 run " in done.stdout, done.stderr
    with open_store(sqlite_url) as store:
        assert [e.type for e in store.events(SYSTEM_CHAIN)] == ["audit.retention_overridden", "audit.pruned"]


def test_signed_prunes_are_told_apart_from_forged_ones(sqlite_url: str, tmp_path: Path) -> None:
    from wflo.audit import generate_key
    from wflo.audit._checkpoint import load_private_key

    generate_key(tmp_path / "audit.pem")
    generate_key(tmp_path / "other.pem")
    audit, other = load_private_key(tmp_path / "audit.pem"), load_private_key(tmp_path / "other.pem")
    old = datetime.now(UTC) - timedelta(days=400)
    with open_store(sqlite_url) as store:
        _finished_run(store, "a", old)
        prune(store, iso(old + timedelta(days=1)), by="user:auditor", private_key=audit)
        _finished_run(store, "b", old)
        prune(store, iso(old + timedelta(days=1)), by="user:mallory", private_key=other)
        ev = build_evidence(store, since=iso(old), until=now_iso(), public_key=audit.public_key())
        (rk,) = [s for s in ev["sections"] if s["key"] == "record_keeping"]
        rows = {r[1]: r[5] for r in next(t for t in rk["tables"] if t["title"] == "Prunes on record")["rows"]}
        assert rows == {"user:auditor": "audit key", "user:mallory": "NOT the audit key"}
        assert rk["figures"]["prunes_not_signed_by_audit_key"] == 1
