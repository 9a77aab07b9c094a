"""One run in detail: its record, cost, children, approvals, chain verdict, and its journal as a
typed timeline (steps, LLM calls, tool calls, guard decisions, approvals, sandbox executions).

The timeline is a reading of the journal, never a second record: each item keeps its ``seq``
and ``hash`` so what the panel shows can be checked against ``wflo audit verify``.
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from typing import Any

from ..approvals import Inbox
from ..audit import ChainReport, chain_hasher, verify_run
from ..cost import Ledger, period_start, run_cost, run_spend, sse_events, usd_str
from ..store import Event, RunRecord, Store, now_iso, parse_iso
from ._runs_query import LIST_COLUMNS, _item

TEXT_LIMIT = 2000
"""Characters of an answer, input or output shown per event (the journal keeps them whole)."""
CHILDREN_LIMIT = 200


def run_json(r: RunRecord) -> dict[str, Any]:
    return {
        "id": r.id, "workflow": r.workflow, "status": r.status, "tenant": r.tenant, "parent_id": r.parent_id,
        "created_at": r.created_at, "updated_at": r.updated_at, "finished_at": r.finished_at,
        "attempts": r.attempts, "events": r.last_seq, "cancel_requested": r.cancel_requested,
        "lease_owner": r.lease_owner, "lease_expires_at": r.lease_expires_at, "wake_at": r.wake_at,
        "input": _shown(r.input), "output": _shown(r.output), "error": r.error,
        "started_by": r.options.get("started_by"), "retry_of": r.options.get("retry_of"),
    }  # fmt: skip


def detail(store: Store, r: RunRecord) -> dict[str, Any]:
    """Everything the run page shows above its timeline."""
    children = store.read(
        f"SELECT {LIST_COLUMNS} FROM runs WHERE parent_id = ? ORDER BY created_at, id LIMIT ?", (r.id, CHILDREN_LIMIT)
    )
    child_costs = run_spend(store, [c[0] for c in children])
    approvals = Inbox(store).list(status=None, run_id=r.id, limit=100)
    return {
        **run_json(r),
        "cost": cost(store, r),
        "children": [_item(c, child_costs.get(c[0], Decimal(0))) for c in children],
        "approvals": [_approval(a) for a in approvals],
        "verify": verdict(store, r),
    }


FULL_VERIFY_SECONDS = 60.0
"""How stale a whole-chain verification of a run may be before the run page repeats it."""
_VERIFIED: dict[tuple[str, str], tuple[int, str, float, str]] = {}
_VERIFIED_LOCK = threading.Lock()


def verdict(store: Store, r: RunRecord) -> dict[str, Any]:
    """The run's chain verified: whole, at most once a minute per run and server process, and
    in between only its new links from the last verified head (and always against the head
    the run records). Anything that does not fit is verified whole at once, and that report
    (the first broken link) is what is shown. ``wflo audit verify`` always reads it all."""
    key = (store.url, r.id)
    with _VERIFIED_LOCK:
        hit = _VERIFIED.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[2] < FULL_VERIFY_SECONDS and hit[0] <= r.last_seq:
        seq, prev = hit[0], hit[1]
        link = chain_hasher(r.id)
        rows = store.read(
            "SELECT seq, type, at, data, prev_hash, hash FROM events WHERE chain = ? AND seq > ? AND seq <= ? "
            "ORDER BY seq",
            (r.id, seq, r.last_seq),
        )
        for row_seq, type_, at, data_json, prev_hash, hash_ in rows:
            if int(row_seq) != seq + 1 or prev_hash != prev or link(prev, int(row_seq), type_, at, data_json) != hash_:
                break
            seq, prev = seq + 1, hash_
        else:
            if (seq, prev) == (r.last_seq, r.last_hash):
                with _VERIFIED_LOCK:
                    _VERIFIED[key] = (seq, prev, hit[2], hit[3])
                report = ChainReport(r.id, seq, True, prev).to_dict()
                return {**report, "whole_chain_verified_at": hit[3]}
    full = verify_run(store, r.id)
    out = full.to_dict()
    out["whole_chain_verified_at"] = now_iso()
    with _VERIFIED_LOCK:
        if full.ok and not full.pruned:
            _VERIFIED[key] = (full.count, full.head, now, out["whole_chain_verified_at"])
            if len(_VERIFIED) > 10_000:
                _VERIFIED.pop(next(iter(_VERIFIED)))
        else:
            _VERIFIED.pop(key, None)
    return out


def cost(store: Store, r: RunRecord) -> dict[str, Any]:
    """Spent (what the ledger charged the run: its spend book rows, the figure the runs list
    and ``wflo costs`` show), held (open reservations), unknown (the part of spent charged at
    a reservation for calls lost with their process, not on the journal yet: the timeline's
    call costs and it add up to spent) and every limited scope the run draws on."""
    spent, reserved, unknown = run_cost(store, r.id)
    ledger = Ledger(store)
    scopes = [f"run:{r.id}", f"workflow:{r.workflow}"] + ([f"tenant:{r.tenant}"] if r.tenant else []) + ["global"]
    budgets = []
    at = parse_iso(store.now())  # the store's day and month, as the reservations'
    for scope in scopes:
        lim = ledger.get_limit(scope)
        use = ledger.scope_usage(scope, period_start(lim.period, at) if lim else "")
        if lim is None and use is None:
            continue
        budgets.append({
            "scope": scope, "period": lim.period if lim else "none",
            "limit_usd": usd_str(lim.limit if lim else use.limit),  # type: ignore[union-attr]
            "spent_usd": usd_str(use.spent if use else Decimal(0)),
            "reserved_usd": usd_str(use.reserved if use else Decimal(0)),
        })  # fmt: skip
    return {"spent_usd": usd_str(spent), "reserved_usd": usd_str(reserved), "unknown_usd": usd_str(unknown),
            "budgets": budgets}  # fmt: skip


def _approval(a: Any) -> dict[str, Any]:
    return {
        "id": a.id, "call": a.call_id, "tool": a.tool, "message": a.message, "status": a.status,
        "action_hash": a.action_hash, "requested_by": a.requested_by, "decided_by": a.decided_by,
        "reason": a.reason, "via": a.via, "created_at": a.created_at, "decided_at": a.decided_at,
        "timeout_at": a.timeout_at,
    }  # fmt: skip


# ------------------------------------------------------------------------- the timeline
def typed(e: Event) -> dict[str, Any]:
    """One journal event as a timeline item: ``kind`` says what it is, ``title`` one line, and
    the fields that kind has (see docs/api.md, "Runs")."""
    d = e.data
    item: dict[str, Any] = {"seq": e.seq, "type": e.type, "at": e.at, "hash": e.hash}
    family = e.type.split(".", 1)[0]
    if family == "call":
        item.update(_call(e.type, d))
    elif family == "budget":
        item.update(kind="budget", decision=e.type.split(".", 1)[1], scope=d.get("scope"), call=d.get("call"),
                    percent=d.get("percent"), spent_usd=d.get("spent"), limit_usd=d.get("limit"),
                    cost_usd=d.get("cost_usd"), reason=d.get("unknown_outcome"))  # fmt: skip
        item["title"] = (f"budget {d.get('scope')} at {d.get('percent')}%" if e.type == "budget.threshold"
                         else f"budget: {e.type.split('.', 1)[1].replace('_', ' ')}")  # fmt: skip
    elif family == "loop":
        item.update(kind="loop", detector=d.get("detector"), call=d.get("call"), evidence=d.get("evidence"),
                    title=f"stopped: {d.get('detector')}")  # fmt: skip
    elif family == "breaker":
        item.update(kind="breaker", call=d.get("call"), breaker=d.get("target"), failures=d.get("failures"),
                    from_state=d.get("from"), to_state=d.get("to"),
                    title=f"{d.get('target')}: {d.get('from', '?')} → {d.get('to', '?')}")  # fmt: skip
    elif family == "approval":
        item.update(kind="approval", approval_id=d.get("approval_id"), call=d.get("call"), tool=d.get("tool"),
                    message=d.get("message"), status=d.get("status"), by=d.get("by"), via=d.get("via"),
                    reason=d.get("reason"), requested_by=d.get("requested_by"), action_hash=d.get("action_hash"),
                    approvers=d.get("approvers"), timeout_at=d.get("timeout_at"))  # fmt: skip
        what = e.type.split(".", 1)[1].replace("_", " ")
        item["title"] = (
            what + (f": {d['status']}" if d.get("status") else "") + (f" by {d['by']}" if d.get("by") else "")
        )
    elif family == "run":
        item.update(kind="run", status=e.type.split(".", 1)[1], title=e.type.split(".", 1)[1].replace("_", " "))
        for key in ("attempt", "worker", "reason", "by", "via", "fix", "retry_of", "status_before", "tenant"):
            if key in d:
                item[key] = d[key]
        if "error" in d:
            item["error"] = _error(d["error"])
        if "output" in d:
            item["output"] = _shown(d["output"])
        if "wait" in d and isinstance(d["wait"], dict):
            item["wait"] = {k: d["wait"].get(k) for k in ("approval_id", "wake_at", "hint") if k in d["wait"]}
    else:
        item.update(kind="other", title=e.type)
    return item


def _call(type_: str, d: dict[str, Any]) -> dict[str, Any]:
    kind = str(d.get("kind") or "step")
    phase = type_.split(".", 1)[1]  # started | completed | failed | retry
    out: dict[str, Any] = {"kind": kind if kind in ("llm", "tool", "sandbox", "step") else "child", "phase": phase,
                           "call": d.get("call"), "name": d.get("name"), "ms": d.get("ms")}  # fmt: skip
    if "error" in d:
        out["error"] = _error(d["error"])
    if kind == "llm":
        usage = d.get("usage") or {}
        out.update(
            model=d.get("name"), provider=d.get("provider"), cost_usd=d.get("cost_usd"),
            reserved_usd=d.get("reserved_usd"), clamped=d.get("clamped"), price_source=d.get("price_source"),
            tokens={"input": usage.get("input_tokens"), "output": usage.get("output_tokens"),
                    "reasoning": usage.get("reasoning_tokens"), "cached": usage.get("cached_input_tokens")},
            latency_ms=d.get("ms"), answer=answer(d.get("output")),
        )  # fmt: skip
        refused = (d.get("error") or {}).get("code") == "budget_exceeded"
        out["budget"] = {"reserved_usd": d.get("reserved_usd"), "clamped": d.get("clamped"), "refused": refused}
        title = str(d.get("name"))
        if phase == "completed":
            title += f" · {usage.get('input_tokens', '?')}→{usage.get('output_tokens', '?')} tokens"
            title += f" · ${d['cost_usd']}" if d.get("cost_usd") else ""
        if refused:
            title += " · refused by budget"
        elif d.get("clamped"):
            title += " · clamped"
    elif kind == "sandbox":
        sb = d.get("sandbox") or {}
        out.update(limits=d.get("limits"), network=d.get("network"), exit_code=sb.get("exit_code"),
                   killed_by=sb.get("killed_by"), backend=sb.get("backend") or d.get("name"),
                   stdout_bytes=sb.get("stdout_bytes"), stderr_bytes=sb.get("stderr_bytes"))  # fmt: skip
        title = str(out["backend"])
        if phase == "completed" or sb:
            title += f" · exit {sb.get('exit_code')}" + (
                f" · killed by {sb['killed_by']}" if sb.get("killed_by") else ""
            )
    else:
        out.update(input=_shown(d.get("input")), output=_shown(d.get("output")), approval=d.get("approval"))
        if d.get("cost_usd") is not None:  # a priced tool's charge
            out["cost_usd"] = d["cost_usd"]
        title = str(d.get("name")) + (f" → {_brief(d['output'])}" if phase == "completed" and "output" in d else "")
    if phase == "failed" and "error" in d:
        title += f" · failed: {out['error'].get('message', '')}"[:200]
    elif phase in ("started", "retry"):
        title += f" · {phase}"
    out["title"] = title
    return out


def _brief(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:79] + "…"


def _error(err: Any) -> dict[str, Any]:
    if not isinstance(err, dict):
        return {"message": str(err)[:TEXT_LIMIT]}
    return {k: err.get(k) for k in ("type", "code", "message", "fields") if k in err}


def _shown(value: Any) -> Any:
    """A value for the page: pickled data is never unpickled; long text is cut."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) == "__wflo_pickle__":
        return "(a pickled value)"
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = str(value)
    return value if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"


def answer(output: Any) -> str | None:
    """The text (and tool calls) of a recorded provider response: Chat Completions, Anthropic
    Messages, or the Responses API; a streamed body's text deltas joined."""
    if not isinstance(output, dict) or not isinstance(output.get("body"), str):
        return None
    body: str = output["body"]
    try:
        doc = json.loads(body)
    except ValueError:
        return _streamed(body)
    if not isinstance(doc, dict):
        return None
    parts: list[str] = []
    for choice in doc.get("choices") or []:
        msg = choice.get("message") or {}
        if msg.get("content"):
            parts.append(str(msg["content"]))
        for tc in msg.get("tool_calls") or []:
            fn = tc.get("function") or {}
            parts.append(f"→ {fn.get('name')}({fn.get('arguments')})")
    for block in doc.get("content") or [] if isinstance(doc.get("content"), list) else []:
        if block.get("type") == "text":
            parts.append(str(block.get("text")))
        elif block.get("type") == "tool_use":
            parts.append(f"→ {block.get('name')}({json.dumps(block.get('input'))})")
    for item in doc.get("output") or [] if isinstance(doc.get("output"), list) else []:
        if item.get("type") == "message":
            parts += [str(c.get("text")) for c in item.get("content") or [] if c.get("type") == "output_text"]
        elif item.get("type") == "function_call":
            parts.append(f"→ {item.get('name')}({item.get('arguments')})")
    text = "\n".join(parts)
    return text[:TEXT_LIMIT] + ("…" if len(text) > TEXT_LIMIT else "") if parts else None


def _streamed(body: str) -> str | None:
    parts: list[str] = []
    for chunk in sse_events(body):
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                parts.append(str(delta))
        delta = chunk.get("delta")
        if isinstance(delta, dict) and delta.get("text"):
            parts.append(str(delta["text"]))
        elif isinstance(delta, str) and chunk.get("type") == "response.output_text.delta":
            parts.append(delta)
    text = "".join(parts)
    return (text[:TEXT_LIMIT] + ("…" if len(text) > TEXT_LIMIT else "")) if text else None
