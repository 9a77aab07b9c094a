"""The HTML report in a real browser (headless Debian chromium): every section renders, no console errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from panel import dump_dom
from wflo.audit import build_report, render_html
from wflo.audit._report import SECTIONS
from wflo.store import Head, NewEvent, open_store


@pytest.fixture
def report_file(sqlite_url: str, tmp_path: Path) -> Path:
    with open_store(sqlite_url) as store:
        run, _ = store.create_run(run_id="r1", workflow="<script>document.title='pwned'</script>", input={}, owner="w")
        head = store.append("r1", Head(run.last_seq, run.last_hash), [
            NewEvent("call.completed", {"kind": "llm", "name": "gpt-4o-mini", "cost_usd": "0.01", "call": "1"}),
            NewEvent("loop.stopped", {"detector": "max_repeats", "evidence": {"summary": "<img src=x onerror=alert(1)>"}}),
        ], owner="w")  # fmt: skip
        store.append("r1", head, [NewEvent("run.stopped", {})], owner="w", status="stopped", finish=True)
        store.append_system([NewEvent("budget.set", {"scope": "global", "usd": "5", "by": 'user:"ann" & co'})])
        report = build_report(store, since="2000-01-01T00:00:00.000000Z", by="user:auditor")
    path = tmp_path / "report.html"
    path.write_text(render_html(report), encoding="utf-8")
    return path


def test_report_renders_in_chromium(report_file: Path, tmp_path: Path) -> None:
    dom, log = dump_dom(report_file, tmp_path / "profile")
    for _, heading in SECTIONS:
        assert f">{heading}</h2>" in dom, heading
    assert "pwned" not in dom.split("<title>")[1].split("</title>")[0]
    assert "&lt;script&gt;document.title" in dom and "<script" not in dom.lower()
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom and "<img" not in dom.lower()
    for marker in ("Uncaught", "ERROR:CONSOLE", ":CONSOLE"):  # any console output: the page has no script
        assert marker not in log, log[-2000:]
