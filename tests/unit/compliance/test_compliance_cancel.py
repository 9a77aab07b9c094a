"""A cancellation in the oversight section names the person who asked for it (issue 19)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import wflo
from wflo import _config
from wflo.compliance import build_evidence
from wflo.store._records import _TIME_FORMAT


def test_a_cancellation_names_who_asked(configured: str) -> None:
    @wflo.workflow(name="cancel_me")
    def cancel_me() -> int:
        return 1

    asked = cancel_me.start()  # queued: no worker takes it
    other = cancel_me.start()
    assert asked.cancel(by="user:ops-lead") == "cancelled"
    _config.get_store().request_cancel(other.id)  # straight at the store: nobody named
    now = datetime.now(UTC)
    since, until = (now - timedelta(hours=1)).strftime(_TIME_FORMAT), (now + timedelta(hours=1)).strftime(_TIME_FORMAT)
    section = {s["key"]: s for s in build_evidence(_config.get_store(), since=since, until=until)["sections"]}[
        "human_oversight"
    ]
    assert section["figures"]["cancellations"] == 2
    assert section["figures"]["cancellations_by_a_person"] == 1
    table = next(t for t in section["tables"] if t["title"] == "Cancellations")
    by_run = {row[1]: (row[2], row[3]) for row in table["rows"]}
    assert by_run == {asked.id: ("user:ops-lead", "local"), other.id: ("request", None)}
