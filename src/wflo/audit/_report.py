"""``wflo report``: a compliance report for a period, as JSON or one self-contained HTML file.

Sections: runs and outcomes, spend against budget limits, approvals (approver and latency),
loop stops, budget refusals, sandbox denials, configuration changes on the system chain, and
the verification result (optionally against a signed checkpoint). Everything comes from the
store: the ``runs`` projection and the events themselves, read here, and the ledger's limits
and usage and the approval requests, read through ``wflo.cost`` and ``wflo.approvals`` (each
domain's tables are read by its own package).

The HTML has inline CSS, no script and no external URL; every value is escaped.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from decimal import Decimal, InvalidOperation
from typing import Any

from ..approvals import approval_records
from ..cost import budget_records
from ..store import Store, now_iso, parse_iso
from . import _tables
from ._checkpoint import verify_checkpoint
from ._verify import verify_all

SECTIONS = (
    ("runs", "Runs and outcomes"),
    ("spend", "Spend and budgets"),
    ("approvals", "Approvals"),
    ("loop_stops", "Loop stops"),
    ("budget_refusals", "Budget refusals"),
    ("sandbox_denials", "Sandbox denials"),
    ("config_changes", "Configuration changes"),
    ("verification", "Verification"),
)
"""``(key, heading)`` of each section, in order (the JSON keys and the HTML headings)."""

_RUN_EVENT_TYPES = ("call.completed", "call.failed", "loop.stopped")
_NOT_CONFIG = ("approval.",)
"""System-chain event types shown elsewhere (approvals have their own section)."""


def _dec(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _load(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def build_report(
    store: Store,
    *,
    since: str,
    until: str | None = None,
    checkpoint: dict[str, Any] | None = None,
    public_key: Any | None = None,
    by: str = "unknown",
) -> dict[str, Any]:
    """The report's data for events and runs in ``[since, until)`` (store time text, UTC)."""
    until = until or now_iso()
    window = (since, until)
    report: dict[str, Any] = {
        "title": "wflo compliance report",
        "generated_at": now_iso(),
        "by": by,
        "since": since,
        "until": until,
    }

    # -- runs and outcomes
    by_status: dict[str, int] = defaultdict(int)
    per_workflow: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for workflow, status, n in _tables.runs_by_workflow_status(store, window):
        by_status[status] += int(n)
        per_workflow[workflow][status] += int(n)
    report["runs"] = {
        "total": sum(by_status.values()),
        "by_status": dict(sorted(by_status.items())),
        "by_workflow": [
            {"workflow": w, "total": sum(s.values()), "by_status": dict(sorted(s.items()))}
            for w, s in sorted(per_workflow.items())
        ],
    }

    # -- run events of interest in the window
    spend: dict[str, dict[str, list[Decimal]]] = {
        k: defaultdict(lambda: [Decimal(0), Decimal(0)]) for k in ("workflow", "model", "tenant")
    }
    loops, refusals, sandbox = [], [], []
    rows = _tables.run_events_of_types(store, window, _RUN_EVENT_TYPES)
    for chain, seq, type_, at, data_json, workflow, tenant in rows:
        data = _load(data_json)
        where = {"run_id": chain, "seq": int(seq), "at": at, "workflow": workflow}
        if type_ == "loop.stopped":
            evidence = _obj(data.get("evidence"))
            loops.append(
                {
                    **where,
                    "detector": data.get("detector"),
                    "summary": evidence.get("summary"),
                    "tool": _obj(evidence.get("call")).get("name"),
                }
            )
            continue
        error = _obj(data.get("error"))
        if type_ == "call.failed" and error.get("code") == "budget_exceeded":
            fields = _obj(error.get("fields"))
            refusals.append(
                {
                    **where,
                    "call": data.get("name"),
                    "scope": fields.get("scope"),
                    "limit": fields.get("limit"),
                    "spent": fields.get("spent"),
                    "requested": fields.get("requested"),
                }
            )
        if data.get("kind") == "sandbox":
            box = _obj(data.get("sandbox"))
            output = _obj(data.get("output"))
            killed = box.get("killed_by") or data.get("killed_by") or output.get("killed_by")
            if killed or (type_ == "call.failed" and error):
                sandbox.append(
                    {
                        **where,
                        "backend": box.get("backend") or data.get("name"),
                        "killed_by": killed or error.get("code"),
                        "exit_code": box.get("exit_code"),
                    }
                )
        cost = data.get("cost_usd")
        if type_ == "call.completed" and cost is not None:
            usd = _dec(cost)
            for key, value in (
                ("workflow", workflow),
                ("model", data.get("name") if data.get("kind") == "llm" else None),
                ("tenant", tenant),
            ):
                bucket = spend[key][str(value) if value is not None else "(none)"]
                bucket[0] += usd
                bucket[1] += 1
    budgets = budget_records(store)
    report["spend"] = {
        "total_usd": str(sum((v[0] for v in spend["workflow"].values()), Decimal(0))),
        **{
            f"by_{k}": [
                {k: name, "usd": str(v[0]), "calls": int(v[1])}
                for name, v in sorted(spend[k].items(), key=lambda kv: (-kv[1][0], kv[0]))
            ]
            for k in ("workflow", "model", "tenant")
        },
        "limits": budgets["limits"],
        "usage": budgets["usage"],
    }
    report["loop_stops"] = loops
    report["budget_refusals"] = refusals
    report["sandbox_denials"] = sandbox

    # -- approvals
    report["approvals"] = approval_records(store, since, until)

    # -- configuration changes (system chain)
    changes = []
    for seq, type_, at, data_json in _tables.system_events(store, window):
        if type_.startswith(_NOT_CONFIG):
            continue
        data = _load(data_json)
        who = data.get("by") or data.get("principal")
        details = {k: v for k, v in data.items() if k not in ("by", "chains")}
        if isinstance(data.get("chains"), list):
            details["chains"] = len(data["chains"])
        changes.append({"seq": int(seq), "at": at, "type": type_, "by": who, "details": details})
    report["config_changes"] = changes

    # -- verification
    reports = verify_all(store)
    broken = [r for r in reports if not r.ok]
    verification: dict[str, Any] = {
        "ok": not broken,
        "chains": len(reports),
        "events": sum(r.count for r in reports if not r.pruned),
        "pruned_chains": sum(1 for r in reports if r.pruned),
        "broken": [r.to_dict() for r in broken],
        "checkpoint": None,
    }
    if checkpoint is not None:
        result = verify_checkpoint(store, checkpoint, public_key)
        verification["checkpoint"] = result.to_dict()
        verification["ok"] = verification["ok"] and result.ok
    report["verification"] = verification
    return report


# --------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;color:#1b1f24;
padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem;
margin-top:2rem}h3{font-size:1rem;margin-bottom:.3rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#57606a}.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.empty{color:#57606a;font-style:italic}code{font-size:.85em;word-break:break-all}
"""


def _e(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[Any]], numeric: tuple[int, ...] = ()) -> str:
    if not rows:
        return '<p class="empty">None in this period.</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{_e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _when(text: str) -> str:
    try:
        return parse_iso(text).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return text


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page (inline CSS, no script, no external URL)."""
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(report['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(report['title'])}</h1>",
        f'<p class="meta">{_e(_when(report["since"]))} to {_e(_when(report["until"]))}; generated '
        f"{_e(_when(report['generated_at']))} by {_e(report['by'])}</p>",
    ]
    headings = dict(SECTIONS)

    def h2(key: str) -> None:
        out.append(f'<section id="{key}"><h2>{_e(headings[key])}</h2>')

    runs = report["runs"]
    h2("runs")
    out.append(f"<p>{_e(runs['total'])} runs started in the period.</p>")
    out.append(_table(["status", "runs"], [[s, n] for s, n in runs["by_status"].items()], (1,)))
    statuses = sorted(runs["by_status"])
    out.append("<h3>By workflow</h3>")
    out.append(
        _table(
            ["workflow", "total", *statuses],
            [[w["workflow"], w["total"], *[w["by_status"].get(s, 0) for s in statuses]] for w in runs["by_workflow"]],
            tuple(range(1, len(statuses) + 2)),
        )
    )
    out.append("</section>")

    spend = report["spend"]
    h2("spend")
    out.append(f"<p>Total recorded LLM and tool spend: <strong>${_e(spend['total_usd'])}</strong></p>")
    for key, title in (("workflow", "By workflow"), ("model", "By model"), ("tenant", "By tenant")):
        out.append(f"<h3>{title}</h3>")
        out.append(_table([key, "USD", "calls"], [[r[key], r["usd"], r["calls"]] for r in spend[f"by_{key}"]], (1, 2)))
    out.append("<h3>Budget limits</h3>")
    out.append(
        _table(
            ["scope", "limit USD", "period", "set at", "set by"],
            [
                [r["scope"], r["limit_usd"], r["period"], _when(r["updated_at"]), r["updated_by"]]
                for r in spend["limits"]
            ],
            (1,),
        )
    )
    out.append("<h3>Usage against limits</h3>")
    out.append(
        _table(
            ["scope", "period start", "limit USD", "spent USD", "reserved USD", "% used"],
            [
                [r["scope"], r["period_start"], r["limit_usd"], r["spent_usd"], r["reserved_usd"], r["percent"]]
                for r in spend["usage"]
            ],
            (2, 3, 4, 5),
        )
    )
    out.append("</section>")

    h2("approvals")
    out.append(
        _table(
            ["approval", "run", "tool", "request", "status", "requested by", "decided by", "latency s", "votes"],
            [
                [
                    a["id"],
                    a["run_id"],
                    a["tool"],
                    a["message"],
                    a["status"],
                    a["requested_by"],
                    a["decided_by"],
                    a["latency_s"],
                    "; ".join(f"{v['principal']}: {v['decision']} via {v['via']}" for v in a["votes"]),
                ]
                for a in report["approvals"]
            ],
            (7,),
        )
    )
    out.append("</section>")

    h2("loop_stops")
    out.append(
        _table(
            ["at", "run", "workflow", "detector", "tool", "evidence"],
            [
                [_when(r["at"]), r["run_id"], r["workflow"], r["detector"], r["tool"], r["summary"]]
                for r in report["loop_stops"]
            ],
        )
    )
    out.append("</section>")

    h2("budget_refusals")
    out.append(
        _table(
            ["at", "run", "workflow", "scope", "limit", "spent", "requested"],
            [
                [_when(r["at"]), r["run_id"], r["workflow"], r["scope"], r["limit"], r["spent"], r["requested"]]
                for r in report["budget_refusals"]
            ],
            (4, 5, 6),
        )
    )
    out.append("</section>")

    h2("sandbox_denials")
    out.append(
        _table(
            ["at", "run", "workflow", "backend", "stopped by", "exit code"],
            [
                [_when(r["at"]), r["run_id"], r["workflow"], r["backend"], r["killed_by"], r["exit_code"]]
                for r in report["sandbox_denials"]
            ],
        )
    )
    out.append("</section>")

    h2("config_changes")
    out.append(
        _table(
            ["at", "change", "by", "details"],
            [[_when(c["at"]), c["type"], c["by"], c["details"]] for c in report["config_changes"]],
        )
    )
    out.append("</section>")

    v = report["verification"]
    h2("verification")
    verdict = '<span class="ok">intact</span>' if v["ok"] else '<span class="bad">BROKEN</span>'
    out.append(
        f"<p>History {verdict}: {_e(v['chains'])} chains, {_e(v['events'])} events verified, "
        f"{_e(v['pruned_chains'])} chains pruned on record.</p>"
    )
    out.append(
        _table(
            ["chain", "seq", "kind", "expected", "found"],
            [[b["chain"], b["seq"], b["kind"], b["expected"], b["found"]] for b in v["broken"]],
        )
    )
    cp = v["checkpoint"]
    if cp is None:
        out.append('<p class="meta">No signed checkpoint was checked.</p>')
    else:
        state = '<span class="ok">extends it</span>' if cp["ok"] else '<span class="bad">does NOT extend it</span>'
        out.append(
            f"<p>Checkpoint of {_e(_when(cp['at']))} (Merkle root <code>{_e(cp['merkle_root'])}</code>, "
            f"{_e(cp['chains'])} chains, signature {'valid' if cp['signature_ok'] else 'INVALID'}"
            f"{', key pinned' if cp['pinned'] else ''}): the database {state}.</p>"
        )
        if cp["problem"]:
            out.append(f'<p class="bad">{_e(cp["problem"])}</p>')
        out.append(
            _table(
                ["chain", "seq", "kind", "expected", "found"],
                [[b["chain"], b["seq"], b["kind"], b["expected"], b["found"]] for b in cp["broken"]],
            )
        )
    out.append("</section></body></html>\n")
    return "".join(out)
