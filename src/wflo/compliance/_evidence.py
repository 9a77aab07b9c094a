"""The evidence of a period, section by section, each mapped to the controls it serves.

Every figure comes from the ``events`` table (the tamper-evident record) except where a
section says otherwise (roles held and budget limits are the store's current projections).
Each section carries the SQL that produced it, so an auditor can run it again, and cites the
``(chain, seq)`` of every event it counts; the pack ships those events in ``records.jsonl``.

A section is a plain dict::

    {"key", "title", "controls": [...], "query": [...], "summary": "...",
     "figures": {name: number or text}, "tables": [{"title", "columns", "rows"}], "notes": [...]}

so the HTML, the PDF and the JSON render one shape.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from ..store import SYSTEM_CHAIN, Store, iso, now_iso, parse_iso
from ._common import _IDLE_EVENTS, _WINDOW_SQL, _Events, _load, _seconds, n
from ._sections import _access, _cost, _inventory, _monitoring

FRAMEWORKS = ("eu-ai-act", "soc2", "iso42001")

CONTROLS: dict[str, dict[str, list[str]]] = {
    "record_keeping": {
        "eu-ai-act": [
            "Art. 12 (record-keeping)",
            "Art. 19 (automatically generated logs)",
            "Art. 26(6) (deployer keeps logs)",
        ],
        "soc2": ["CC7.2 (system monitoring: logging)"],
        "iso42001": ["A.6.2.8 (AI system recording of event logs)"],
    },
    "human_oversight": {
        "eu-ai-act": ["Art. 14 (human oversight)"],
        "soc2": ["CC8.1 (changes authorised and approved)"],
        "iso42001": ["A.9.2 (processes for responsible use of AI systems)"],
    },
    "inventory": {
        "eu-ai-act": ["Art. 11 and Annex IV (technical documentation)"],
        "soc2": ["CC6.1 (inventory of information assets)"],
        "iso42001": ["A.4.2 (resource documentation)", "A.4.4 (tooling resources)"],
    },
    "access": {
        "soc2": ["CC6.1 (logical access)", "CC6.2 (granting access)", "CC6.3 (changing and removing access)"],
        "iso42001": ["A.3.2 (AI roles and responsibilities)"],
    },
    "monitoring": {
        "eu-ai-act": ["Art. 72 (post-market monitoring)"],
        "soc2": ["CC7.2 (anomalies)", "CC7.3 (evaluating events)", "CC7.4 (responding to incidents)"],
        "iso42001": ["A.6.2.6 (AI system operation and monitoring)"],
    },
    "cost": {
        "soc2": ["CC7.2 (anomalies: spend)"],
        "iso42001": ["A.4.5 (system and computing resources)"],
    },
}
"""Section key -> framework -> the controls it gives evidence for (empty: not part of that pack)."""

TITLES = {
    "record_keeping": "Record-keeping",
    "human_oversight": "Human oversight",
    "inventory": "Inventory",
    "access": "Access",
    "monitoring": "Monitoring and incidents",
    "cost": "Cost",
}


def sections_for(framework: str) -> list[str]:
    """The section keys of a pack for ``framework`` (``all``: every section)."""
    if framework == "all":
        return list(CONTROLS)
    return [k for k, by in CONTROLS.items() if by.get(framework)]


def controls_for(key: str, framework: str) -> list[str]:
    by = CONTROLS[key]
    if framework == "all":
        names = {"eu-ai-act": "EU AI Act", "soc2": "SOC 2", "iso42001": "ISO/IEC 42001"}
        return [f"{names[f]} {c}" for f in FRAMEWORKS for c in by.get(f, [])]
    prefix = {"eu-ai-act": "EU AI Act", "soc2": "SOC 2", "iso42001": "ISO/IEC 42001"}[framework]
    return [f"{prefix} {c}" for c in by.get(framework, [])]


def build_evidence(
    store: Store,
    *,
    since: str,
    until: str | None = None,
    framework: str = "all",
    retention_days: int = 183,
    gap_seconds: float = 3600.0,
    checkpoint: dict[str, Any] | None = None,
    public_key: Any | None = None,
    by: str = "unknown",
) -> dict[str, Any]:
    """Every figure of a pack for events in ``[since, until)`` (store time text, UTC)."""
    if framework != "all" and framework not in FRAMEWORKS:
        from .._errors import UserError

        raise UserError(f"unknown framework {framework!r}: use one of {', '.join((*FRAMEWORKS, 'all'))}")
    until = until or now_iso()
    length = parse_iso(until) - parse_iso(since)
    previous = (iso(parse_iso(since) - length), since)
    events = _Events(store.read(_WINDOW_SQL, (since, until)))
    cites: set[tuple[str, int]] = set()
    builders = {
        "record_keeping": lambda: _record_keeping(
            store, events, since, until, retention_days, gap_seconds, checkpoint, public_key, cites
        ),
        "human_oversight": lambda: _oversight(events, cites),
        "inventory": lambda: _inventory(store, events, cites),
        "access": lambda: _access(store, events, cites),
        "monitoring": lambda: _monitoring(store, events, previous, cites),
        "cost": lambda: _cost(store, events, until, cites),
    }
    sections = []
    for key in sections_for(framework):
        section = builders[key]()
        sections.append({"key": key, "title": TITLES[key], "controls": controls_for(key, framework), **section})
    return {
        "format": "wflo-evidence",
        "version": 1,
        "framework": framework,
        "since": since,
        "until": until,
        "previous_period": {"since": previous[0], "until": previous[1]},
        "generated_at": now_iso(),
        "by": by,
        "sections": sections,
        "cited": sorted(cites),
    }


# --------------------------------------------------------------------------- record-keeping
def find_gaps(
    rows: list[tuple[str, int, str, str, dict[str, Any]]], *, until: str, gap_seconds: float
) -> list[dict[str, Any]]:
    """Spans longer than ``gap_seconds`` with no event at all while some run was live.

    A run is live from one of its events to its next one unless the first was a wait or an
    end (``run.waiting``, ``run.completed`` …): a waiting run is rightly silent. A run still
    live at the last event stays live to ``until``. So a gap is a silence that a running
    run should not have had: a dead worker, a lost writer, deleted events.
    """
    times = sorted({r[3] for r in rows})
    if not times:
        return []
    live: list[tuple[str, str, str]] = []  # (run, from, to)
    per_run: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for chain, _seq, type_, at, _data in rows:
        if chain != SYSTEM_CHAIN:
            per_run[chain].append((at, type_))
    for chain, items in per_run.items():
        for (at, type_), (nxt, _t) in zip(items, [*items[1:], (until, "")], strict=True):
            if type_ not in _IDLE_EVENTS:
                live.append((chain, at, nxt))
    gaps = []
    for start, end in zip(times, [*times[1:], until], strict=True):
        if _seconds(start, end) <= gap_seconds:
            continue
        runs = sorted({c for c, a, b in live if a <= start and b >= end})
        if runs:
            gaps.append({"from": start, "to": end, "seconds": round(_seconds(start, end), 3), "runs": runs})
    return gaps


def _record_keeping(
    store: Store,
    events: _Events,
    since: str,
    until: str,
    retention_days: int,
    gap_seconds: float,
    checkpoint: dict[str, Any] | None,
    public_key: Any | None,
    cites: set[tuple[str, int]],
) -> dict[str, Any]:
    from ..audit import verify_all
    from ..audit._checkpoint import record_signed_by, verify_checkpoint

    by_type = Counter(r[2] for r in events.rows)
    per_day = Counter(r[3][:10] for r in events.rows)
    runs_per_day: dict[str, set[str]] = defaultdict(set)
    for chain, _seq, _type, at, _data in events.rows:
        if chain != SYSTEM_CHAIN:
            runs_per_day[at[:10]].add(chain)
    chains = {r[0] for r in events.rows}
    # Prunes count as prunes here whoever signed them; the table below says which the audit key
    # signed, so a legitimate unsigned prune is shown as such instead of as a broken history.
    reports = verify_all(store)
    broken = [r for r in reports if not r.ok]
    notes = []
    checked: dict[str, Any] | None = None
    if checkpoint is not None:
        checked = verify_checkpoint(store, checkpoint, public_key).to_dict()
    last_cp = store.read_one(
        "SELECT seq, at, data FROM events WHERE chain = ? AND type = 'audit.checkpointed' AND at < ? "
        "ORDER BY seq DESC LIMIT 1",
        (SYSTEM_CHAIN, until),
    )
    if checked is None:
        notes.append(
            "No checkpoint file was given, so the history was checked link by link only; a signed checkpoint "
            "(kept away from the database) also catches a consistent rewrite."
        )
    prunes = []
    for seq, at, data_json in store.read(
        "SELECT seq, at, data FROM events WHERE chain = ? AND type = 'audit.pruned' AND at < ? ORDER BY seq",
        (SYSTEM_CHAIN, until),
    ):
        data = _load(data_json)
        cites.add((SYSTEM_CHAIN, int(seq)))
        if "signature" not in data:
            signature = "unsigned"
        elif public_key is None:
            signature = "signed (no key to check it against)"
        else:
            signature = "audit key" if record_signed_by(data, public_key) else "NOT the audit key"
        prunes.append([at, data.get("by"), data.get("before"), len(data.get("chains") or []), data.get("events"),
                       signature])  # fmt: skip
    overrides = store.read(
        "SELECT seq, at, data FROM events WHERE chain = ? AND type = 'audit.retention_overridden' AND at < ? ORDER BY seq",
        (SYSTEM_CHAIN, until),
    )
    for seq, _at, _d in overrides:
        cites.add((SYSTEM_CHAIN, int(seq)))
    oldest = store.read_one("SELECT MIN(at) FROM events")
    gaps = find_gaps(events.rows, until=until, gap_seconds=gap_seconds)
    for gap in gaps:
        cites.update((c, s) for c, s, _t, a, _d in events.rows if a in (gap["from"], gap["to"]))
    if last_cp is not None:
        cites.add((SYSTEM_CHAIN, int(last_cp[0])))
    last = _load(last_cp[2]) if last_cp else {}
    ok = not broken and (checked is None or bool(checked["ok"]))
    unsigned = sum(1 for p in prunes if p[5] != "audit key")
    if unsigned:
        notes.append(
            f"{n(unsigned, 'prune')} on record {'is' if unsigned == 1 else 'are'} not signed by the audit key: anyone "
            "with write access to the database could have filed such a record (wflo audit prune --key signs them)."
        )
    figures: dict[str, Any] = {
        "events": len(events.rows),
        "chains": len(chains),
        "runs_with_events": len(chains - {SYSTEM_CHAIN}),
        "history_intact": ok,
        "chains_verified": len(reports),
        "broken_chains": len(broken),
        "checkpoint_checked": checked is not None,
        "checkpoint_ok": checked["ok"] if checked else None,
        "last_checkpoint_on_record": last_cp[1] if last_cp else None,
        "retention_days": retention_days,
        "oldest_event": oldest[0] if oldest else None,
        "prunes_on_record": len(prunes),
        "prunes_not_signed_by_audit_key": sum(1 for p in prunes if p[5] != "audit key"),
        "retention_overrides": len(overrides),
        "gaps": len(gaps),
    }
    state = "intact" if ok else "BROKEN"
    summary = (
        f"The period holds {n(len(events.rows), 'event')} on {n(len(chains), 'chain')}, all recorded automatically; "
        f"the whole history ({n(len(reports), 'chain')}) verifies as {state}. Records are kept for at least "
        f"{n(retention_days, 'day')}. On record: {n(len(prunes), 'prune')}, {n(len(overrides), 'retention override')}; "
        f"{n(len(gaps), 'silent gap')} longer than {int(gap_seconds)} s while runs were active."
    )
    tables = [
        {
            "title": "Events by type",
            "columns": ["type", "events"],
            "rows": [[t, count] for t, count in sorted(by_type.items())],
        },
        {
            "title": "Events per day",
            "columns": ["day (UTC)", "events", "runs with events"],
            "rows": [[d, per_day[d], len(runs_per_day[d])] for d in sorted(per_day)],
        },
        {
            "title": "Broken links",
            "columns": ["chain", "seq", "kind", "expected", "found"],
            "rows": [[r.chain, r.seq, r.kind, r.expected, r.found] for r in broken],
        },
        {
            "title": "Prunes on record",
            "columns": ["at", "by", "before", "chains", "events", "signature"],
            "rows": prunes,
        },
        {
            "title": "Retention overrides",
            "columns": ["at", "by", "prune before", "earliest allowed", "reason"],
            "rows": [
                [a, d.get("by"), d.get("before"), d.get("earliest_allowed"), d.get("reason")]
                for _s, a, d in ((s, a, _load(j)) for s, a, j in overrides)
            ],
        },
        {
            "title": "Gaps (no event while a run was live)",
            "columns": ["from", "to", "seconds", "runs"],
            "rows": [[g["from"], g["to"], g["seconds"], ", ".join(g["runs"])] for g in gaps],
        },
    ]
    if checked is not None:
        tables.insert(1, {
            "title": "Signed checkpoint",
            "columns": ["checkpoint at", "Merkle root", "chains", "signature", "database extends it", "problem"],
            "rows": [[checked["at"], checked["merkle_root"], checked["chains"],
                      "valid" if checked["signature_ok"] else "INVALID", "yes" if checked["ok"] else "NO",
                      checked["problem"]]],
        })  # fmt: skip
    elif last:
        notes.append(f"The last checkpoint on record was signed at {last.get('at')} by {last.get('by')}.")
    return {
        "query": [
            _WINDOW_SQL,
            "verify_all(store): recompute every chain's link hashes (wflo audit verify)",
            "SELECT seq, at, data FROM events WHERE chain = 'system' AND type IN ('audit.pruned', "
            "'audit.retention_overridden', 'audit.checkpointed') AND at < :until",
        ],
        "summary": summary,
        "figures": figures,
        "tables": tables,
        "notes": notes,
    }


# --------------------------------------------------------------------------- human oversight
def oversight_rows(events: _Events) -> dict[str, dict[str, Any]]:
    """One record per approval seen in the period: request, decision or timeout."""
    out: dict[str, dict[str, Any]] = {}

    def item(aid: Any) -> dict[str, Any]:
        return out.setdefault(str(aid), {"id": str(aid), "cites": []})

    for chain, seq, type_, at, data in events.of("approval.requested", "approval.decided", "approval.expired"):
        aid = data.get("approval_id")
        if aid is None:
            continue
        if type_ == "approval.requested" and chain != SYSTEM_CHAIN:
            a = item(aid)
            a.update(run=chain, tool=data.get("tool"), requested_by=data.get("requested_by"), requested_at=at,
                     action_hash=data.get("action_hash"))  # fmt: skip
            a["cites"].append((chain, seq))
        elif type_ == "approval.decided" and chain == SYSTEM_CHAIN:
            a = item(aid)
            a.update(status=data.get("status"), decided_by=data.get("by"), via=data.get("via"), decided_at=at,
                     reason=data.get("reason"), decided_hash=data.get("action_hash"), timed_out=False)  # fmt: skip
            a.setdefault("run", data.get("run_id"))
            a["cites"].append((chain, seq))
        elif type_ == "approval.expired" and chain == SYSTEM_CHAIN:
            a = item(aid)
            a.update(status=data.get("status"), decided_by=data.get("by"), via="timeout", decided_at=at,
                     reason=data.get("reason"), timed_out=True)  # fmt: skip
            a["cites"].append((chain, seq))
    for a in out.values():
        a["edited"] = bool(a.get("decided_hash") and a.get("action_hash") and a["decided_hash"] != a["action_hash"])
        start, end = a.get("requested_at"), a.get("decided_at")
        a["latency_s"] = round(_seconds(start, end), 3) if start and end else None
    return out


def _oversight(events: _Events, cites: set[tuple[str, int]]) -> dict[str, Any]:
    approvals = oversight_rows(events)
    for a in approvals.values():
        cites.update(a["cites"])
    decided = [a for a in approvals.values() if a.get("decided_at") and not a.get("timed_out")]
    latencies = [a["latency_s"] for a in decided if a["latency_s"] is not None]
    cancels = events.of("run.cancelled")
    cites.update((c, s) for c, s, *_ in cancels)
    # Who asked: the request on the system chain (the run's own event is written by whoever
    # stopped it, often a worker, and names no person).
    asked: dict[str, tuple[str, int, dict[str, Any]]] = {}
    for c, s, _t, _a, d in events.of("run.cancel_requested"):
        asked.setdefault(str(d.get("run_id")), (c, s, d))
    for run_id, _s, *_ in cancels:
        if run_id in asked:
            cites.add(asked[run_id][:2])
    figures: dict[str, Any] = {
        "approval_requests": sum(1 for a in approvals.values() if a.get("requested_at")),
        "decisions_by_a_person": len(decided),
        "approved": sum(1 for a in decided if a.get("status") == "approved"),
        "rejected": sum(1 for a in decided if a.get("status") == "rejected"),
        "edited": sum(1 for a in decided if a["edited"]),
        "timed_out": sum(1 for a in approvals.values() if a.get("timed_out")),
        "pending_at_end": sum(1 for a in approvals.values() if a.get("requested_at") and not a.get("decided_at")),
        "median_latency_s": round(statistics.median(latencies), 3) if latencies else None,
        "max_latency_s": max(latencies) if latencies else None,
        "cancellations": len(cancels),
        "cancellations_by_a_person": sum(1 for c, *_ in cancels if c in asked),
    }
    summary = (
        f"{n(int(figures['approval_requests']), 'action')} asked for a human decision. People decided {len(decided)}: "
        f"{figures['approved']} approved, {figures['rejected']} rejected, {figures['edited']} with edited arguments. "
        f"Timed out: {figures['timed_out']}; still waiting at the end of the period: {figures['pending_at_end']}; "
        f"runs cancelled on request: {len(cancels)}."
    )
    rows = [
        [a.get("requested_at"), a["id"], a.get("run"), a.get("tool"), a.get("requested_by"), a.get("status", "pending"),
         a.get("decided_by"), a.get("via"), a["latency_s"], "yes" if a["edited"] else "no", a.get("reason")]
        for a in sorted(approvals.values(), key=lambda a: (a.get("requested_at") or a.get("decided_at") or "", a["id"]))
    ]  # fmt: skip
    return {
        "query": [
            "SELECT chain, seq, at, data FROM events WHERE at in the period AND type IN ('approval.requested' "
            "(run chains), 'approval.decided', 'approval.expired' (system chain))",
            "SELECT chain, seq, at, data FROM events WHERE at in the period AND type = 'run.cancelled'",
            "SELECT chain, seq, at, data FROM events WHERE at in the period AND type = 'run.cancel_requested' "
            "(system chain: who asked)",
        ],
        "summary": summary,
        "figures": figures,
        "tables": [
            {
                "title": "Approvals",
                "columns": [
                    "requested",
                    "approval",
                    "run",
                    "action",
                    "requested by",
                    "outcome",
                    "decided by",
                    "via",
                    "latency s",
                    "edited",
                    "reason",
                ],
                "rows": rows,
            },
            {
                "title": "Cancellations",
                "columns": ["at", "run", "asked by", "via", "status before"],
                "rows": [
                    [
                        a,
                        c,
                        asked[c][2].get("by") if c in asked else d.get("by"),
                        asked[c][2].get("via") if c in asked else None,
                        d.get("status_before"),
                    ]
                    for c, _s, _t, a, d in cancels
                ],
            },
        ],
        "notes": [
            "A decision's person is the principal the store recorded: signed in to `wflo server`, the authenticated "
            "person (via: api/panel); locally, the configured principal (via: local/cli). A cancellation names who asked for it "
            "(run.cancel_requested on the system chain); one made straight in the database names no one (by: request)."
        ],
    }
