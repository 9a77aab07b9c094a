"""Approval notifications: a Slack-compatible webhook and SMTP email.

Configured by environment: ``WFLO_APPROVAL_WEBHOOK`` (URL), and ``WFLO_SMTP_HOST``,
``WFLO_SMTP_PORT`` (25), ``WFLO_SMTP_FROM``, ``WFLO_SMTP_TO`` (comma-separated). Sent from a
background thread, retried three times with backoff; each delivery or final failure is an
event on the system chain. A failing notifier never blocks the run or loses the request: the
request is in the inbox before any notification is tried.
"""

from __future__ import annotations

import logging
import os
import smtplib
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError
from ..store import NewEvent, Store

if TYPE_CHECKING:
    from ._inbox import ApprovalRequest

log = logging.getLogger("wflo.approvals")
_threads: list[threading.Thread] = []


def _text(kind: str, req: ApprovalRequest) -> str:
    who = ", ".join(req.approvers) or "any approver"
    verb = {
        "created": "needs a decision",
        "escalated": "was escalated and needs a decision",
        "expired": f"timed out ({req.status})",
    }[kind]
    return (
        f"wflo approval {req.id} {verb}: {req.message} [approvers: {who}; not the requester {req.requested_by}]\n"
        f"Decide with: wflo approve {req.id}   or   wflo reject {req.id} --reason '...'"
    )


def _webhook(url: str) -> Callable[[str, ApprovalRequest], None]:
    def send(kind: str, req: ApprovalRequest) -> None:
        import httpx

        payload = {
            "text": _text(kind, req),
            "wflo": {"event": kind, "approval_id": req.id, "run_id": req.run_id, "tool": req.tool, "status": req.status,
                     "approvers": req.approvers, "action_hash": req.action_hash, "timeout_at": req.timeout_at},
        }  # fmt: skip
        httpx.post(url, json=payload, timeout=5).raise_for_status()

    return send


def smtp_port() -> int:
    """``WFLO_SMTP_PORT`` (default 25), or a ``ConfigurationError`` naming it.

    Read when a notification is sent, in the background: a mistyped port makes that
    notification fail on the record (``approval.notify_failed``), never the run that asked."""
    text = os.environ.get("WFLO_SMTP_PORT", "").strip() or "25"
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigurationError(f"WFLO_SMTP_PORT={text!r} is not a port number; accepted: 1 to 65535 (default 25)")
    return int(text)


def _email(host: str, sender: str, to: list[str]) -> Callable[[str, ApprovalRequest], None]:
    def send(kind: str, req: ApprovalRequest) -> None:
        port = smtp_port()
        msg = EmailMessage()
        msg["Subject"] = f"[wflo] approval {kind}: {req.tool}"
        msg["From"] = sender
        msg["To"] = ", ".join(to)
        msg.set_content(_text(kind, req))
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.send_message(msg)

    return send


def notifiers() -> dict[str, Callable[[str, ApprovalRequest], None]]:
    out: dict[str, Callable[[str, ApprovalRequest], None]] = {}
    if os.environ.get("WFLO_APPROVAL_WEBHOOK"):
        out["webhook"] = _webhook(os.environ["WFLO_APPROVAL_WEBHOOK"])
    if os.environ.get("WFLO_SMTP_HOST") and os.environ.get("WFLO_SMTP_TO"):
        out["email"] = _email(
            os.environ["WFLO_SMTP_HOST"],
            os.environ.get("WFLO_SMTP_FROM", "wflo@localhost"),
            [a.strip() for a in os.environ["WFLO_SMTP_TO"].split(",") if a.strip()],
        )
    return out


def notify(kind: str, req: ApprovalRequest, store: Store, *, attempts: int = 3, backoff: float = 0.5) -> None:
    """Send ``kind`` (created/escalated/expired) to every configured notifier, in the background."""
    targets = notifiers()
    if not targets:
        return

    def deliver() -> None:
        for name, send in targets.items():
            error: Any = None
            for attempt in range(1, attempts + 1):
                try:
                    send(kind, req)
                    error = None
                    break
                except ConfigurationError as exc:  # a setting to fix: trying again cannot help
                    error = exc
                    break
                except Exception as exc:  # retried; the last failure is recorded
                    error = exc
                    time.sleep(backoff * attempt)
            data = {"approval_id": req.id, "notifier": name, "event": kind, "attempts": attempt}
            try:
                if error is None:
                    store.append_system([NewEvent("approval.notified", data)])
                else:
                    log.warning("wflo approval notifier %s failed: %s", name, error)
                    store.append_system(
                        [NewEvent("approval.notify_failed", {**data, "error": f"{type(error).__name__}: {error}"})]
                    )
            except Exception as exc:  # the store closed (process exiting); the request itself is safe
                log.warning("wflo: could not record notification result: %s", exc)

    thread = threading.Thread(target=deliver, name="wflo-approval-notify", daemon=True)
    _threads.append(thread)
    thread.start()


def wait_for_notifications(timeout: float = 10.0) -> None:
    """Wait for background notifications to finish (tests, and before a script exits)."""
    deadline = time.monotonic() + timeout
    for thread in list(_threads):
        thread.join(max(0.0, deadline - time.monotonic()))
        if not thread.is_alive():
            _threads.remove(thread)
