"""Approval notifications reach a real webhook on localhost; a failing one is retried and recorded."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wflo import _config
from wflo.approvals import approvals, wait_for_notifications
from wflo.engine import Worker

sys.path.insert(0, str(Path(__file__).parent))
import approvalapp

from receivers import SMTP


class _Hook:
    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, object]] = []
        self.fail_first = fail_first
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if hook.fail_first > 0:
                    hook.fail_first -= 1
                    self.send_response(503)
                else:
                    hook.bodies.append(body)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> object:
    h = _Hook(fail_first=1)
    yield h
    h.close()


def test_webhook_gets_slack_compatible_body_after_a_retry(
    configured: str, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WFLO_APPROVAL_WEBHOOK", hook.url)
    handle = approvalapp.refunds.start("o7", 999.0)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1)
    wait_for_notifications()
    assert len(hook.bodies) == 1
    body = hook.bodies[0]
    assert "needs a decision" in body["text"] and "wflo approve" in body["text"]
    assert body["wflo"]["run_id"] == handle.id and body["wflo"]["event"] == "created"
    notified = [e for e in _config.get_store().events("system") if e.type == "approval.notified"]
    assert notified and notified[-1].data["attempts"] == 2


def test_failing_notifier_never_loses_the_request(configured: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WFLO_APPROVAL_WEBHOOK", "http://127.0.0.1:9/unreachable")
    handle = approvalapp.refunds.start("o8", 999.0)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1)
    assert handle.status() == "waiting"
    assert len(approvals.list(run_id=handle.id)) == 1
    wait_for_notifications(timeout=20)
    failed = [e for e in _config.get_store().events("system") if e.type == "approval.notify_failed"]
    assert failed and failed[-1].data["attempts"] == 3 and "notifier" in failed[-1].data


def test_email_notification_over_smtp(configured: str, monkeypatch: pytest.MonkeyPatch) -> None:
    smtp = SMTP()
    try:
        monkeypatch.setenv("WFLO_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("WFLO_SMTP_PORT", str(smtp.port))
        monkeypatch.setenv("WFLO_SMTP_TO", "finance@example.org, ops@example.org")
        handle = approvalapp.refunds.start("o10", 4242.0)
        Worker(concurrency=1).run(max_runs=1, idle_timeout=1)
        wait_for_notifications()
        assert len(smtp.messages) == 1
        mail = smtp.messages[0]
        assert "To: finance@example.org, ops@example.org" in mail
        assert "Subject: [wflo] approval created: refund" in mail and "wflo approve" in mail
        assert handle.status() == "waiting"
    finally:
        smtp.close()


def test_a_mistyped_smtp_port_fails_the_notification_not_the_run(
    configured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WFLO_SMTP_PORT=smtp raised a bare ValueError from int() while the request was filed: the
    run failed with "invalid literal for int()", its request left pending. Now the run waits as
    it should and the notification fails on the record, naming the variable."""
    monkeypatch.setenv("WFLO_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("WFLO_SMTP_TO", "finance@example.org")
    monkeypatch.setenv("WFLO_SMTP_PORT", "smtp")
    handle = approvalapp.refunds.start("o11", 999.0)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1)
    assert handle.status() == "waiting"
    wait_for_notifications()
    failed = [e for e in _config.get_store().events("system") if e.type == "approval.notify_failed"]
    assert failed and failed[-1].data["notifier"] == "email" and failed[-1].data["attempts"] == 1
    assert "WFLO_SMTP_PORT='smtp' is not a port number" in failed[-1].data["error"]
