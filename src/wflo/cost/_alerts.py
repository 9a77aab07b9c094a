"""Budget threshold alerts: sent to a webhook when one is configured (best effort)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger("wflo.budget")


def notify_thresholds(alerts: list[dict[str, Any]], *, run_id: str | None) -> None:
    """POST each crossed threshold to ``WFLO_BUDGET_WEBHOOK`` (Slack-compatible ``text``).

    Sent from a background thread with a short timeout and two retries: an alert never
    blocks or fails the call that crossed the threshold. The threshold is in the journal
    (``budget.threshold``) whether or not the webhook answers.
    """
    url = os.environ.get("WFLO_BUDGET_WEBHOOK")
    if not url or not alerts:
        return

    def send() -> None:
        import httpx

        for alert in alerts:
            text = f"wflo budget {alert['scope']} reached {alert['percent']}%: ${alert['spent']} of ${alert['limit']}"
            payload = {"text": text, "wflo": {**alert, "run_id": run_id}}
            for attempt in range(3):
                try:
                    httpx.post(url, json=payload, timeout=5).raise_for_status()
                    break
                except Exception as exc:  # retried, then logged: alerts are best effort
                    if attempt == 2:
                        log.warning("wflo budget webhook failed: %s", exc)

    threading.Thread(target=send, name="wflo-budget-alert", daemon=True).start()
