"""Scheduled packs: ``wflo worker`` makes one per finished period, without anyone remembering.

With ``compliance_schedule`` set (``daily``, ``weekly`` or ``monthly``) and an audit key
(``compliance_key``), the worker loop calls ``run_schedule`` (at most once a minute). When the
last finished period (yesterday; last Monday-to-Monday week; last calendar month, all UTC)
has no scheduled ``compliance.pack`` event on the system chain yet, it builds the pack into
``compliance_dir/<framework>-<schedule>-<start date>``, verified against the previous pack's
signed checkpoint when there is one, and, with ``compliance_notify``, sends it through the
webhook and SMTP settings the approval notifiers use. Each send (or failure) is a
``compliance.sent`` / ``compliance.send_failed`` event.

Of workers due at once on one directory, the one that creates ``<name>.partial`` makes the
pack; workers with different directories may each make one (each valid, each on record).
A failure is logged and tried again at the next check; it never stops the worker.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import smtplib
import threading
import time
import weakref
import zipfile
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ..approvals._notify import smtp_port
from ..store import SYSTEM_CHAIN, NewEvent, Store, iso

log = logging.getLogger("wflo.compliance")
CHECK_EVERY = 60.0
"""Seconds between two looks at the schedule from one worker."""
_last_check: weakref.WeakKeyDictionary[Store, float] = weakref.WeakKeyDictionary()
"""When each open store's schedule was last looked at (a closed store is forgotten)."""
_threads: weakref.WeakKeyDictionary[Store, threading.Thread] = weakref.WeakKeyDictionary()
PARTIAL_AGE = 3600.0
"""Seconds after which a half-made pack folder is taken as abandoned."""


def due_period(schedule: str, now: datetime | None = None) -> tuple[str, str]:
    """``(since, until)`` of the last finished ``daily``/``weekly``/``monthly`` period (UTC)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if schedule == "daily":
        end, start = today, today - timedelta(days=1)
    elif schedule == "weekly":
        end = today - timedelta(days=today.weekday())
        start = end - timedelta(days=7)
    elif schedule == "monthly":
        end = today.replace(day=1)
        start = (end - timedelta(days=1)).replace(day=1)
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return iso(start), iso(end)


def _already_made(store: Store, framework: str, since: str, until: str) -> bool:
    for (data_json,) in store.read(
        "SELECT data FROM events WHERE chain = ? AND type = 'compliance.pack' ORDER BY seq DESC LIMIT 200",
        (SYSTEM_CHAIN,),
    ):
        data = json.loads(data_json)
        if data.get("scheduled") and (data.get("framework"), data.get("since"), data.get("until")) == (
            framework,
            since,
            until,
        ):
            return True
    return False


def _previous_checkpoint(root: Path, before: str) -> dict[str, Any] | None:
    from ..audit import read_checkpoint

    found = sorted(
        p for p in root.glob("*/checkpoint.json") if p.parent.name < before and p.parent.suffix != ".partial"
    )
    return read_checkpoint(found[-1]) if found else None


def run_schedule(
    store: Store, *, now: datetime | None = None, force: bool = False, background: bool = False
) -> Path | None:
    """Make the due scheduled pack, if any; return its folder. Never raises (logs instead).

    With ``background`` (the worker's call) the pack is made in a thread, so runs keep being
    claimed meanwhile; one at a time per store. ``wait_for_packs`` waits for it.
    """
    from .._config import settings

    cfg = settings()
    if not cfg.compliance_schedule:
        return None
    clock = time.monotonic()
    last = _last_check.get(store)
    if not force and last is not None and clock - last < CHECK_EVERY:
        return None
    _last_check[store] = clock
    if background:
        running = _threads.get(store)
        if running is not None and running.is_alive():
            return None
        thread = threading.Thread(target=_safely, args=(store, cfg, now), name="wflo-compliance-pack", daemon=True)
        _threads[store] = thread
        thread.start()
        return None
    return _safely(store, cfg, now)


def wait_for_packs(timeout: float = 60.0) -> None:
    """Wait for packs being made in the background (tests, and before a script exits)."""
    deadline = time.monotonic() + timeout
    for thread in list(_threads.values()):
        thread.join(max(0.0, deadline - time.monotonic()))


def _safely(store: Store, cfg: Any, now: datetime | None) -> Path | None:
    try:
        return _generate(store, cfg, now)
    except Exception as exc:  # the worker's runs matter more; the next check tries again
        log.warning("wflo compliance: scheduled pack failed: %s", exc)
        return None


def _tidy(root: Path) -> None:
    """Finish or clear packs a stopped process left half-made (``<name>.partial``).

    A pack is written into ``<name>.partial`` and renamed when complete, so a folder without
    the suffix is always whole. A partial one with its manifest only missed the rename; one
    without, older than an hour (not another worker's pack in progress), is removed.
    """
    for partial in root.glob("*.partial"):
        final = partial.with_suffix("")
        try:
            if (partial / "manifest.json").exists() and not final.exists():
                partial.rename(final)
            elif time.time() - partial.stat().st_mtime > PARTIAL_AGE:
                shutil.rmtree(partial)
        except OSError as exc:
            log.warning("wflo compliance: cannot tidy %s: %s", partial, exc)


def _generate(store: Store, cfg: Any, now: datetime | None) -> Path | None:
    from ..audit import load_private_key
    from ._pack import build_pack

    framework = cfg.compliance_framework
    since, until = due_period(cfg.compliance_schedule, now)
    root = Path(cfg.compliance_dir or os.path.join(".wflo", "compliance"))
    if root.is_dir():
        _tidy(root)
    if _already_made(store, framework, since, until):
        return None
    if not cfg.compliance_key:
        log.warning("wflo compliance: a pack is due but no audit key is set (WFLO_AUDIT_KEY)")
        return None
    key = load_private_key(cfg.compliance_key)
    name = f"{framework}-{cfg.compliance_schedule}-{since[:10]}"
    folder = root / name
    if (folder / "manifest.json").exists():
        return None
    try:
        import fpdf  # noqa: F401  a PDF when the audit extra is installed, else HTML

        fmt = "pdf"
    except ImportError:
        fmt = "html"
    checkpoint = _previous_checkpoint(root, name) if root.is_dir() else None
    partial = root / f"{name}.partial"
    try:
        partial.mkdir(parents=True)  # exclusive: of two workers due at once, one makes the pack
    except FileExistsError:
        return None
    build_pack(
        store, partial, since=since, until=until, private_key=key, framework=framework, fmt=fmt,
        checkpoint=checkpoint, retention_days=cfg.retention_days, by=f"{cfg.principal} (scheduled)", scheduled=True,
    )  # fmt: skip
    partial.rename(folder)
    if cfg.compliance_notify:
        send_pack(store, folder)
    return folder


def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{folder.name}/{path.name}")
    return buf.getvalue()


def send_pack(store: Store, folder: Path) -> None:
    """Send the pack through the configured webhook (a summary) and SMTP (the pack as a zip)."""
    manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
    text = (
        f"wflo compliance pack for {manifest['since'][:10]} to {manifest['until'][:10]} ({manifest['framework']}): "
        f"{manifest['records']} cited records; check it with: wflo compliance verify {folder.name}"
    )
    targets: list[tuple[str, Any]] = []
    if os.environ.get("WFLO_APPROVAL_WEBHOOK"):
        url = os.environ["WFLO_APPROVAL_WEBHOOK"]

        def webhook() -> None:
            import httpx

            body = {"text": text, "wflo": {"event": "compliance.pack", "folder": str(folder), "manifest": manifest}}
            httpx.post(url, json=body, timeout=10).raise_for_status()

        targets.append(("webhook", webhook))
    if os.environ.get("WFLO_SMTP_HOST") and os.environ.get("WFLO_SMTP_TO"):

        def email() -> None:
            msg = EmailMessage()
            msg["Subject"] = f"[wflo] compliance pack {manifest['since'][:10]} ({manifest['framework']})"
            msg["From"] = os.environ.get("WFLO_SMTP_FROM", "wflo@localhost")
            msg["To"] = os.environ["WFLO_SMTP_TO"]
            msg.set_content(text)
            msg.add_attachment(_zip(folder), maintype="application", subtype="zip", filename=f"{folder.name}.zip")
            with smtplib.SMTP(os.environ["WFLO_SMTP_HOST"], smtp_port(), timeout=10) as smtp:
                smtp.send_message(msg)

        targets.append(("email", email))
    for name, send in targets:
        data = {"notifier": name, "folder": folder.name, "since": manifest["since"], "until": manifest["until"]}
        try:
            send()
            store.append_system([NewEvent("compliance.sent", data)])
        except Exception as exc:  # recorded; the pack is on disk either way
            log.warning("wflo compliance: sending the pack by %s failed: %s", name, exc)
            store.append_system([NewEvent("compliance.send_failed", {**data, "error": f"{type(exc).__name__}: {exc}"})])
