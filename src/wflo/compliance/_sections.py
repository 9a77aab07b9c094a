"""Sections of a pack: inventory, access, monitoring and incidents, cost (see ``_evidence``)."""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

from ..approvals import Inbox
from ..cost import budget_records
from ..store import SYSTEM_CHAIN, Store
from ._common import _ACCESS_PREFIXES, _WINDOW_SQL, INCIDENT_KINDS, _dec, _Events, _load, _obj, classify, n, run_info


# --------------------------------------------------------------------------- inventory
def _inventory(store: Store, events: _Events, cites: set[tuple[str, int]]) -> dict[str, Any]:
    from importlib import metadata

    def use(table: dict[str, dict[str, Any]], name: str, at: str) -> dict[str, Any]:
        entry = table.setdefault(name, {"uses": 0, "first": at, "last": at})
        entry["uses"] += 1
        entry["first"], entry["last"] = min(entry["first"], at), max(entry["last"], at)
        return entry

    workflows: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    tools: dict[str, dict[str, Any]] = {}
    sandboxes: dict[str, dict[str, Any]] = {}
    for chain, seq, type_, at, data in events.rows:
        if type_ == "run.created":
            cites.add((chain, seq))
        elif type_ in ("call.completed", "call.failed"):
            kind, name = data.get("kind"), str(data.get("name"))
            if kind == "llm":
                m = use(models, name, at)
                if data.get("provider"):
                    m.setdefault("providers", set()).add(str(data["provider"]))
                if data.get("price_source"):
                    m.setdefault("prices", set()).add(f"{data.get('price_source')} ({data.get('price_version')})")
                usage = _obj(data.get("usage"))
                m["input_tokens"] = m.get("input_tokens", 0) + int(usage.get("input_tokens") or 0)
                m["output_tokens"] = m.get("output_tokens", 0) + int(usage.get("output_tokens") or 0)
                m["usd"] = m.get("usd", Decimal(0)) + _dec(data.get("cost_usd") or 0)
            elif kind == "tool":
                use(tools, name, at)
            elif kind == "sandbox":
                use(sandboxes, name, at)
    first_last: dict[str, list[str]] = {}
    for chain, _seq, _type, at, _data in events.rows:
        if chain != SYSTEM_CHAIN:
            span = first_last.setdefault(chain, [at, at])
            span[0], span[1] = min(span[0], at), max(span[1], at)
    agents: dict[str, dict[str, Any]] = {}
    for chain, (workflow, _tenant, agent) in run_info(store, list(first_last)).items():
        if isinstance(agent, str) and agent:
            a = agents.setdefault(
                agent, {"uses": 0, "workflows": set(), "first": first_last[chain][0], "last": first_last[chain][1]}
            )
            a["uses"] += 1
            a["workflows"].add(str(workflow))
            a["first"], a["last"] = min(a["first"], first_last[chain][0]), max(a["last"], first_last[chain][1])
        entry = workflows.setdefault(
            str(workflow), {"uses": 0, "first": first_last[chain][0], "last": first_last[chain][1]}
        )
        entry["uses"] += 1
        entry["first"] = min(entry["first"], first_last[chain][0])
        entry["last"] = max(entry["last"], first_last[chain][1])
    try:
        from ..tools import catalog

        manifests = {t["name"]: t for t in catalog()}
    except Exception:  # the catalog is informative; a broken optional tool must not stop the pack
        manifests = {}
    versions = []
    for dist in ("wflo", "openai", "anthropic", "litellm", "langgraph", "crewai", "openai-agents", "pydantic-ai-slim",
                 "genai-prices", "cryptography", "psycopg"):  # fmt: skip
        try:
            versions.append([dist, metadata.version(dist)])
        except metadata.PackageNotFoundError:
            continue
    figures = {
        "workflows": len(workflows),
        "agents": len(agents),
        "models": len(models),
        "tools": len(tools),
        "sandbox_backends": len(sandboxes),
    }
    return {
        "query": [
            "SELECT chain, seq, at, data FROM events WHERE at in the period AND type = 'run.created'",
            "SELECT at, data FROM events WHERE at in the period AND type IN ('call.completed', 'call.failed') "
            "GROUP BY data.kind, data.name",
            "importlib.metadata.version(...) of wflo and its integrations, at generation time",
        ],
        "summary": (
            f"In the period: {n(len(workflows), 'workflow')}, {n(len(models), 'model')}, {n(len(tools), 'tool')}"
            f" and {n(len(sandboxes), 'sandbox backend')} were used."
        ),
        "figures": figures,
        "tables": [
            {
                "title": "Workflows",
                "columns": ["workflow", "runs with events", "first", "last"],
                "rows": [[k, v["uses"], v["first"], v["last"]] for k, v in sorted(workflows.items())],
            },
            {
                "title": "Models and providers",
                "columns": [
                    "model",
                    "providers",
                    "calls",
                    "input tokens",
                    "output tokens",
                    "USD",
                    "prices from",
                    "first",
                    "last",
                ],
                "rows": [
                    [
                        k,
                        ", ".join(sorted(v.get("providers", ()))),
                        v["uses"],
                        v["input_tokens"],
                        v["output_tokens"],
                        str(v["usd"]),
                        ", ".join(sorted(v.get("prices", ()))),
                        v["first"],
                        v["last"],
                    ]
                    for k, v in sorted(models.items())
                ],
            },
            {
                "title": "Agents (named by a framework integration)",
                "columns": ["agent", "runs", "workflows", "first", "last"],
                "rows": [
                    [k, v["uses"], ", ".join(sorted(v["workflows"])), v["first"], v["last"]]
                    for k, v in sorted(agents.items())
                ],
            },
            {
                "title": "Tools",
                "columns": ["tool", "calls", "first", "last", "manifest (built-in catalog)"],
                "rows": [
                    [
                        k,
                        v["uses"],
                        v["first"],
                        v["last"],
                        f"risk {manifests[k].get('risk')}: {manifests[k].get('description')}"
                        if k in manifests
                        else None,
                    ]
                    for k, v in sorted(tools.items())
                ],
            },
            {
                "title": "Sandbox backends",
                "columns": ["backend", "executions", "first", "last"],
                "rows": [[k, v["uses"], v["first"], v["last"]] for k, v in sorted(sandboxes.items())],
            },
            {"title": "Software versions (at generation)", "columns": ["package", "version"], "rows": versions},
        ],
        "notes": [
            "Versions are those installed where the pack was generated; each call's price source and version "
            "is the one recorded with the call."
        ],
    }


# --------------------------------------------------------------------------- access
def _role_of(data: dict[str, Any]) -> Any:
    """A grant's role, or the roles a sign-in mapped (``auth.login``)."""
    roles = data.get("roles")
    return data.get("role") or (", ".join(map(str, roles)) if isinstance(roles, list) else None)


def _access(store: Store, events: _Events, cites: set[tuple[str, int]]) -> dict[str, Any]:
    changes = [r for r in events.rows if r[0] == SYSTEM_CHAIN and r[2].startswith(_ACCESS_PREFIXES)]
    cites.update((c, s) for c, s, *_ in changes)
    decisions = Counter(
        (str(d.get("by")), str(d.get("via")))
        for c, _s, t, _a, d in events.rows
        if c == SYSTEM_CHAIN and t in ("approval.decided", "approval.voted")
    )
    roles = [[p, ", ".join(names), created, updated] for p, names, created, updated in Inbox(store).principals()]
    grants = sum(1 for r in changes if r[2].endswith((".granted", ".created")))
    removals = sum(1 for r in changes if r[2].endswith((".revoked", ".removed", ".deleted")))
    sign_ins = sum(1 for r in changes if r[2] == "auth.login")
    refused = sum(1 for r in changes if r[2] == "auth.failed")
    return {
        "query": [
            "SELECT id, roles FROM principals (current roles: the store's projection)",
            "SELECT seq, at, type, data FROM events WHERE chain = 'system' AND at in the period AND type LIKE "
            "'principal.%' (or role., token., auth., login., session., grant.)",
            "SELECT data.by, data.via, COUNT(*) FROM events WHERE chain = 'system' AND type IN ('approval.decided', "
            "'approval.voted') GROUP BY 1, 2",
        ],
        "summary": (
            f"{n(len(roles), 'principal')} now {'holds' if len(roles) == 1 else 'hold'} roles. In the period: {n(grants, 'grant')}, "
            f"{n(removals, 'removal')}, {n(sign_ins, 'sign-in')}, {n(refused, 'refused sign-in or token')}, "
            f"and {n(sum(decisions.values()), 'approval vote')} cast by {n(len({p for p, _ in decisions}), 'principal')}."
        ),
        "figures": {
            "principals_with_roles": len(roles),
            "access_changes": len(changes),
            "grants": grants,
            "removals": removals,
            "sign_ins": sign_ins,
            "refused_sign_ins_and_tokens": refused,
            "approval_votes": sum(decisions.values()),
        },
        "tables": [
            {"title": "Roles held (now)", "columns": ["principal", "roles", "since", "changed"], "rows": roles},
            {
                "title": "Grants, removals, tokens and sign-ins",
                "columns": ["at", "change", "principal", "role", "by"],
                "rows": [
                    [a, t, d.get("principal") or d.get("by"), _role_of(d), d.get("by")] for _c, _s, t, a, d in changes
                ],
            },
            {
                "title": "Who decided, and how",
                "columns": ["principal", "via", "votes"],
                "rows": [[p, v, n] for (p, v), n in sorted(decisions.items())],
            },
        ],
        "notes": [
            "Access changes are read from the system chain: role grants and removals, API tokens created and "
            "revoked, sign-ins through the server (single sign-on, with the roles mapped at sign-in), sign-outs, "
            "and refused sign-ins and tokens (auth.failed). Work done directly on the store (local mode) is "
            "recorded with the principal the process was configured with (WFLO_PRINCIPAL) and the OS user; "
            "who may reach the database and the hosts is the organisation's own access control."
        ],
    }


# --------------------------------------------------------------------------- monitoring
def _incident(type_: str, data: dict[str, Any]) -> str:
    kind = classify(type_, data)
    error = _obj(data.get("error"))
    if kind == "loop_stops":
        return f"{data.get('detector')}: {_obj(data.get('evidence')).get('summary') or ''}".strip(": ")
    if kind == "budget_refusals":
        f = _obj(error.get("fields"))
        return f"{f.get('scope')}: limit {f.get('limit')}, spent {f.get('spent')}, call needed {f.get('requested')}"
    if kind == "budget_thresholds":
        return f"{data.get('scope')} crossed {data.get('percent')}% of {data.get('limit')}"
    if kind == "breaker_openings":
        return f"circuit to {data.get('target')} opened after {data.get('failures')} failures"
    if kind in ("sandbox_kills", "sandbox_refusals"):
        box, out = _obj(data.get("sandbox")), _obj(data.get("output"))
        return f"{data.get('name')}: {box.get('killed_by') or out.get('killed_by') or error.get('code')}"
    return str(_obj(data.get("error")).get("message") or data.get("reason") or "")


def _monitoring(
    store: Store, events: _Events, previous: tuple[str, str], cites: set[tuple[str, int]]
) -> dict[str, Any]:
    now: Counter[str] = Counter()
    rows = []
    for chain, seq, type_, at, data in events.rows:
        kind = classify(type_, data)
        if kind is None:
            continue
        now[kind] += 1
        cites.add((chain, seq))
        rows.append([at, kind.replace("_", " "), chain, _incident(type_, data)])
    before: Counter[str] = Counter()
    for _c, _s, type_, _a, data_json in store.read(_WINDOW_SQL, previous):
        kind = classify(type_, _load(data_json))
        if kind is not None:
            before[kind] += 1
    trend = [[k.replace("_", " "), now[k], before[k], now[k] - before[k]] for k in INCIDENT_KINDS]
    total, prev_total = sum(now.values()), sum(before.values())
    return {
        "query": [
            _WINDOW_SQL + " -- then each event classified: call.failed with error.code budget_exceeded, "
            "budget.threshold, loop.stopped, breaker.transition to open, sandbox calls killed or refused, "
            "run.failed, run.stopped",
            "the same over the previous period of equal length, for the trend",
        ],
        "summary": (
            f"Incidents recorded: {total} (previous period of the same length: {prev_total}). Budget refusals: "
            f"{now['budget_refusals']}; loop stops: {now['loop_stops']}; circuit-breaker openings: "
            f"{now['breaker_openings']}; sandbox stops: {now['sandbox_kills'] + now['sandbox_refusals']}; "
            f"failed runs: {now['failed_runs']}."
        ),
        "figures": {**{k: now[k] for k in INCIDENT_KINDS}, "total": total, "previous_total": prev_total},
        "tables": [
            {
                "title": "Trend against the previous period",
                "columns": ["kind", "this period", "previous", "change"],
                "rows": trend,
            },
            {"title": "Incidents", "columns": ["at", "kind", "run", "what happened"], "rows": rows},
        ],
        "notes": [
            "wflo detects and stops these events and records them; deciding whether one is a serious incident "
            "to report (EU AI Act Art. 73) is the organisation's process."
        ],
    }


# --------------------------------------------------------------------------- cost
def _cost(store: Store, events: _Events, until: str, cites: set[tuple[str, int]]) -> dict[str, Any]:
    runs = run_info(store, sorted({r[0] for r in events.rows if r[2] == "call.completed"}))
    spend: dict[str, dict[str, list[Decimal]]] = {k: defaultdict(lambda: [Decimal(0), Decimal(0)]) for k in
                                                  ("workflow", "model", "tenant")}  # fmt: skip
    total = Decimal(0)
    for chain, seq, type_, _at, data in events.rows:
        if type_ != "call.completed" or data.get("cost_usd") is None:
            continue
        usd = _dec(data["cost_usd"])
        total += usd
        cites.add((chain, seq))
        workflow, tenant, _agent = runs.get(chain, (None, None, None))
        model = data.get("name") if data.get("kind") == "llm" else None
        for key, value in (("workflow", workflow), ("model", model), ("tenant", tenant)):
            bucket = spend[key][str(value) if value is not None else "(none)"]
            bucket[0] += usd
            bucket[1] += 1
    budgets = budget_records(store, until=until)
    usage = [[u["scope"], u["period_start"], u["limit_usd"], u["spent_usd"], u["reserved_usd"], u["percent"]]
             for u in budgets["usage"]]  # fmt: skip
    limits = [[b["scope"], b["limit_usd"], b["period"], b["updated_at"], b["updated_by"]] for b in budgets["limits"]]
    tables = [
        {"title": f"Spend by {k}", "columns": [k, "USD", "calls"],
         "rows": [[n, str(v[0]), int(v[1])] for n, v in sorted(spend[k].items(), key=lambda kv: (-kv[1][0], kv[0]))]}
        for k in ("workflow", "model", "tenant")
    ]  # fmt: skip
    tables.append({"title": "Budget limits (now)", "columns": ["scope", "limit USD", "period", "set at", "set by"],
                   "rows": limits})  # fmt: skip
    tables.append({"title": "Usage against limits", "columns": ["scope", "period start", "limit USD", "spent USD",
                                                                "reserved USD", "% used"], "rows": usage})  # fmt: skip
    over = sum(1 for u in usage if u[5] is not None and u[5] > 100)
    return {
        "query": [
            "SELECT chain, seq, data.cost_usd FROM events WHERE at in the period AND type = 'call.completed' "
            "(joined to runs for workflow and tenant)",
            "SELECT scope, period_start, limit_usd, spent_usd, reserved_usd FROM budget_usage WHERE period_start < :until",
        ],
        "summary": (
            f"Spent on recorded calls in the period: ${total}, across {n(len(spend['workflow']), 'workflow')}. "
            f"Budget limits set: {len(limits)}; budget periods above their limit: {over}."
        ),
        "figures": {
            "total_usd": str(total),
            "paid_calls": sum(int(v[1]) for v in spend["workflow"].values()),
            "budget_limits": len(limits),
            "budget_periods_over_limit": over,
        },
        "tables": tables,
        "notes": ["Money is exact decimal USD as recorded with each call (the provider's reported usage, priced)."],
    }
