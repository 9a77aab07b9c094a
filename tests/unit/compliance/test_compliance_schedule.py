"""Scheduled packs: `wflo worker` makes one per finished period (once), verified against the
previous pack's checkpoint, on the system chain; sent by webhook and SMTP when asked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from compliancekit import Hook, clock

from receivers import SMTP
from wflo import _config
from wflo.audit import generate_key
from wflo.compliance import due_period, run_schedule, verify_pack, wait_for_packs
from wflo.engine import Worker
from wflo.store import SYSTEM_CHAIN, Head, NewEvent


def test_due_periods() -> None:
    now = datetime(2026, 3, 4, 15, 30, tzinfo=UTC)  # a Wednesday
    assert due_period("daily", now) == ("2026-03-03T00:00:00.000000Z", "2026-03-04T00:00:00.000000Z")
    assert due_period("weekly", now) == ("2026-02-23T00:00:00.000000Z", "2026-03-02T00:00:00.000000Z")
    assert due_period("monthly", now) == ("2026-02-01T00:00:00.000000Z", "2026-03-01T00:00:00.000000Z")
    assert due_period("monthly", datetime(2026, 1, 1, tzinfo=UTC))[0] == "2025-12-01T00:00:00.000000Z"


def _yesterday_run(run_id: str) -> None:
    store = _config.get_store()
    at = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=1)
    with clock(at):
        run, _ = store.create_run(run_id=run_id, workflow="wf", input={}, owner="w1")
        store.append(run_id, Head(run.last_seq, run.last_hash), [NewEvent("loop.stopped", {"detector": "max_steps"}),
                     NewEvent("run.stopped", {})], owner="w1", status="stopped", finish=True)  # fmt: skip


def _configure(store_url: str, tmp_path: Path, **extra: object) -> None:
    generate_key(tmp_path / "k.pem")
    _config.configure(database=store_url, poll_interval=0.05, compliance_schedule="daily",
                      compliance_dir=str(tmp_path / "packs"), compliance_key=str(tmp_path / "k.pem"), **extra)  # fmt: skip


def test_worker_makes_the_daily_pack_once(store_url: str, tmp_path: Path) -> None:
    _configure(store_url, tmp_path)
    _yesterday_run("y1")
    Worker(concurrency=1).run(idle_timeout=0.3)
    wait_for_packs()  # made in a thread, so the worker kept claiming runs meanwhile
    since, _until = due_period("daily")
    (folder,) = (tmp_path / "packs").iterdir()
    assert folder.name == f"all-daily-{since[:10]}"
    assert verify_pack(folder).ok
    names = sorted(p.name for p in folder.iterdir())
    assert "checkpoint.json" in names and ("report.pdf" in names or "report.html" in names)
    evidence = json.loads((folder / "evidence.json").read_text())
    (mon,) = [s for s in evidence["sections"] if s["key"] == "monitoring"]
    assert mon["figures"]["loop_stops"] == 1 and mon["figures"]["stopped_runs"] == 1
    store = _config.get_store()
    packs = [e for e in store.events(SYSTEM_CHAIN) if e.type == "compliance.pack"]
    assert len(packs) == 1 and packs[0].data["scheduled"] is True and packs[0].data["since"] == since
    # another worker (or the next check) does not make it again
    assert run_schedule(store, force=True) is None
    Worker(concurrency=1).run(idle_timeout=0.2)
    wait_for_packs()
    assert len([e for e in store.events(SYSTEM_CHAIN) if e.type == "compliance.pack"]) == 1


def test_next_pack_is_checked_against_the_previous_checkpoint(sqlite_url: str, tmp_path: Path) -> None:
    _configure(sqlite_url, tmp_path)
    store = _config.get_store()
    first = run_schedule(store, now=datetime(2026, 3, 2, 1, tzinfo=UTC), force=True)
    assert first is not None and (first / "checkpoint.json").exists()
    second = run_schedule(store, now=datetime(2026, 3, 3, 1, tzinfo=UTC), force=True)
    assert second is not None and second != first
    evidence = json.loads((second / "evidence.json").read_text())
    (rk,) = [s for s in evidence["sections"] if s["key"] == "record_keeping"]
    assert rk["figures"]["checkpoint_checked"] is True and rk["figures"]["checkpoint_ok"] is True


def test_no_key_no_pack_and_the_worker_goes_on(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _config.configure(database=sqlite_url, compliance_schedule="daily", compliance_dir=str(tmp_path / "packs"))
    assert run_schedule(_config.get_store(), force=True) is None
    assert "no audit key" in caplog.text and not (tmp_path / "packs").exists()
    _config.configure(database=sqlite_url)
    assert run_schedule(_config.get_store(), force=True) is None  # not configured: a no-op


def test_pack_is_sent_by_webhook_and_smtp(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook, smtp = Hook(), SMTP()
    try:
        monkeypatch.setenv("WFLO_APPROVAL_WEBHOOK", hook.url)
        monkeypatch.setenv("WFLO_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("WFLO_SMTP_PORT", str(smtp.port))
        monkeypatch.setenv("WFLO_SMTP_TO", "audit@example.org")
        _configure(sqlite_url, tmp_path, compliance_notify=True)
        _yesterday_run("y2")
        folder = run_schedule(_config.get_store(), force=True)
        assert folder is not None
        (body,) = hook.bodies
        assert body["wflo"]["event"] == "compliance.pack" and "wflo compliance verify" in body["text"]
        assert body["wflo"]["manifest"]["signature"] == json.loads((folder / "manifest.json").read_text())["signature"]
        (mail,) = smtp.messages
        assert "Subject: [wflo] compliance pack" in mail and f'filename="{folder.name}.zip"' in mail
        sent = [e.data["notifier"] for e in _config.get_store().events(SYSTEM_CHAIN) if e.type == "compliance.sent"]
        assert sorted(sent) == ["email", "webhook"]
    finally:
        hook.close()
        smtp.close()


def test_a_failed_send_is_recorded(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WFLO_APPROVAL_WEBHOOK", "http://127.0.0.1:9/unreachable")
    _configure(sqlite_url, tmp_path, compliance_notify=True)
    folder = run_schedule(_config.get_store(), force=True)
    assert folder is not None and verify_pack(folder).ok  # the pack is on disk either way
    failed = [e for e in _config.get_store().events(SYSTEM_CHAIN) if e.type == "compliance.send_failed"]
    assert failed and failed[0].data["notifier"] == "webhook"


def test_half_made_packs_are_finished_or_cleared(sqlite_url: str, tmp_path: Path) -> None:
    """A process killed mid-pack leaves `<name>.partial`: never mistaken for a whole pack."""
    import os

    from wflo.compliance import _schedule

    _configure(sqlite_url, tmp_path)
    store = _config.get_store()
    made = run_schedule(store, now=datetime(2026, 3, 2, 1, tzinfo=UTC), force=True)
    assert made is not None
    # killed after the pack and its event were written, before the rename: finished on the next look
    made.rename(made.with_name(made.name + ".partial"))
    assert run_schedule(store, now=datetime(2026, 3, 2, 1, tzinfo=UTC), force=True) is None  # already on record
    assert made.exists() and verify_pack(made).ok
    # killed half-way (no manifest): left alone while it may be another worker's pack in progress ...
    half = tmp_path / "packs" / "all-daily-2026-03-02.partial"
    half.mkdir()
    (half / "evidence.json").write_text("{")
    assert run_schedule(store, now=datetime(2026, 3, 3, 1, tzinfo=UTC), force=True) is None
    assert half.exists() and not (tmp_path / "packs" / "all-daily-2026-03-02").exists()
    # ... and removed once older than that could be, then the pack is made whole
    stale = os.path.getmtime(half) - _schedule.PARTIAL_AGE - 10
    os.utime(half, (stale, stale))
    fresh = run_schedule(store, now=datetime(2026, 3, 3, 1, tzinfo=UTC), force=True)
    assert fresh is not None and fresh.name == "all-daily-2026-03-02" and verify_pack(fresh).ok
    assert not half.exists()


def test_two_workers_due_at_once_make_one_pack(store_url: str, tmp_path: Path) -> None:
    import threading

    from wflo.store import open_store

    _configure(store_url, tmp_path)
    _yesterday_run("y3")
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    made: list[object] = []

    def go(store: object) -> None:
        barrier.wait()
        made.append(run_schedule(store, force=True))  # type: ignore[arg-type]

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        folders = [m for m in made if m is not None]
        assert len(folders) == 1 and verify_pack(folders[0]).ok  # type: ignore[arg-type]
        assert [p.name for p in (tmp_path / "packs").iterdir()] == [folders[0].name]  # type: ignore[attr-defined]
        packs = [e for e in stores[0].events(SYSTEM_CHAIN) if e.type == "compliance.pack"]
        assert len(packs) == 1
    finally:
        for s in stores:
            s.close()
