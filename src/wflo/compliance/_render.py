"""The pack's report as one self-contained HTML page, for a reader who does not know wflo.

First an overview in sentences and numbers, then each section (the controls it serves, what
it found, its figures and tables, the query behind it), then the appendix of cited records.
Inline CSS, no script, no external URL; every value is escaped.
"""

from __future__ import annotations

import html
import json
from typing import Any

from ..audit._report import _CSS
from ..store import parse_iso

APPENDIX_ROWS = 2000
"""Cited records listed in the report itself (all of them are in records.jsonl)."""

FRAMEWORK_NAMES = {
    "all": "EU AI Act, SOC 2 and ISO/IEC 42001",
    "eu-ai-act": "the EU AI Act",
    "soc2": "SOC 2",
    "iso42001": "ISO/IEC 42001",
}

INTRO = (
    "wflo is the software this organisation uses to run AI agents under limits: spending budgets, "
    "automatic stops for runaway agents, sandboxed code execution and human approval of risky actions. "
    "Everything it does is written to a tamper-evident record (each entry is linked to the previous one by "
    "a SHA-256 hash, so an edit or deletion is detectable). This report was generated from that record. "
    "Each section names the controls it gives evidence for and the query that produced it; the appendix "
    "lists the records it cites, which are included in the pack (records.jsonl) and signed."
)


def when(text: Any) -> str:
    """A store time as ``2026-01-02 03:04:05 UTC`` (anything else unchanged)."""
    if not isinstance(text, str):
        return "—" if text is None else str(text)
    try:
        return parse_iso(text).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return text


def cell(value: Any) -> str:
    """A value as plain text for a table cell."""
    if value is None:
        return "—"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    if isinstance(value, str) and len(value) == 27 and value.endswith("Z") and value[10] == "T":
        return when(value)
    return str(value)


def label(name: str) -> str:
    return name.replace("_", " ").capitalize().replace("Usd", "USD")


def overview(evidence: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]]]:
    """The first page: sentences, and the headline numbers as ``(label, value)``."""
    by_key = {s["key"]: s for s in evidence["sections"]}
    sentences = [
        f"This report covers {when(evidence['since'])} to {when(evidence['until'])} and maps wflo's record to "
        f"{FRAMEWORK_NAMES.get(evidence['framework'], evidence['framework'])}."
    ]
    sentences.extend(s["summary"] for s in evidence["sections"])
    numbers: list[tuple[str, str]] = []
    rk = by_key.get("record_keeping")
    if rk:
        f = rk["figures"]
        numbers += [("Record", "intact" if f["history_intact"] else "BROKEN"), ("Events recorded", str(f["events"])),
                    ("Silent gaps", str(f["gaps"]))]  # fmt: skip
    ho = by_key.get("human_oversight")
    if ho:
        numbers += [("Human decisions", str(ho["figures"]["decisions_by_a_person"])),
                    ("Approvals timed out", str(ho["figures"]["timed_out"]))]  # fmt: skip
    mo = by_key.get("monitoring")
    if mo:
        numbers += [("Incidents (before)", f"{mo['figures']['total']} ({mo['figures']['previous_total']})")]
    co = by_key.get("cost")
    if co:
        numbers += [("Spend (USD)", co["figures"]["total_usd"])]
    return sentences, numbers


def _e(value: Any) -> str:
    return html.escape(cell(value), quote=True)


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return '<p class="empty">None in this period.</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if isinstance(v, int | float) else ''}>{_e(v)}</td>" for v in r) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_EXTRA_CSS = """
.lead{font-size:1.05rem}.figs{display:flex;flex-wrap:wrap;gap:.6rem;margin:1rem 0}
.fig{border:1px solid #d0d7de;border-radius:6px;padding:.5rem .8rem;min-width:9rem}
.fig b{display:block;font-size:1.3rem}.controls{color:#0550ae}.query{background:#f6f8fa;padding:.4rem;
font-size:.8rem;white-space:pre-wrap}@media print{section{page-break-before:always}}
"""


def render_html(evidence: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The report page (inline CSS, no script, no external URL)."""
    sentences, numbers = overview(evidence)
    title = f"Compliance evidence: {FRAMEWORK_NAMES.get(evidence['framework'], evidence['framework'])}"
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}{_EXTRA_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{_e(when(evidence["since"]))} to {_e(when(evidence["until"]))}; generated '
        f"{_e(when(evidence['generated_at']))} by {_e(evidence['by'])}</p>",
        '<section id="overview"><h2>What this period shows</h2>',
        '<div class="figs">',
        *(f'<div class="fig">{_e(k)}<b>{_e(v)}</b></div>' for k, v in numbers),
        "</div>",
        *(f'<p class="lead">{_e(s)}</p>' for s in sentences),
        f'<p class="meta">{_e(INTRO)}</p>',
        "<h3>Contents</h3><ol>",
        *(f'<li><a href="#{s["key"]}">{_e(s["title"])}</a></li>' for s in evidence["sections"]),
        '<li><a href="#appendix">Appendix: cited records</a></li></ol></section>',
    ]
    for s in evidence["sections"]:
        out.append(f'<section id="{_e(s["key"])}"><h2>{_e(s["title"])}</h2>')
        out.append(f'<p class="controls">Controls: {_e("; ".join(s["controls"]))}</p>')
        out.append(f"<p>{_e(s['summary'])}</p>")
        out.append(_table(["figure", "value"], [[label(k), v] for k, v in s["figures"].items()]))
        for t in s["tables"]:
            out.append(f"<h3>{_e(t['title'])}</h3>")
            out.append(_table(t["columns"], t["rows"]))
        for note in s["notes"]:
            out.append(f'<p class="meta">{_e(note)}</p>')
        out.append("<h3>How this was produced</h3>")
        out.extend(f'<pre class="query">{_e(q)}</pre>' for q in s["query"])
        out.append("</section>")
    out.append('<section id="appendix"><h2>Appendix: cited records</h2>')
    out.append(
        f"<p>{len(records)} records are cited; each is in records.jsonl with its stored data and link hashes."
        f"{f' The first {APPENDIX_ROWS} are listed here.' if len(records) > APPENDIX_ROWS else ''}</p>"
    )
    out.append(
        _table(
            ["chain", "seq", "type", "at", "hash"],
            [
                [
                    r["chain"],
                    r["seq"],
                    r["type"],
                    r["at"],
                    r["hash"][:16] + "…" + (" DOES NOT HASH" if r.get("hash_mismatch_in_store") else ""),
                ]
                for r in records[:APPENDIX_ROWS]
            ],
        )
    )
    out.append("</section></body></html>\n")
    return "".join(out)
