"""Spans from the run journal, following the OpenTelemetry GenAI semantic conventions.

A run is exported when it ends, stops, fails or waits, from its journal rather than live:
a run resumed after a crash exports its calls once (replayed calls add no events), and a
run that waited exports each stretch once (the events since it last waited). All stretches
of a run share one trace, whose id (and the first stretch's span id) derive from the run id.

Spans (names and attributes as in semantic conventions ``SEMCONV_VERSION``)::

    invoke_workflow {workflow}          the run (one per stretch; later ones are children of the first)
      ├─ chat {model}                   an LLM call          (kind CLIENT)
      ├─ execute_tool {tool}            a tool call
      └─ step {name} / sandbox / child  other calls; calls made inside a step are its children
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from ..cost import sse_events
from ..store import END_EVENTS, Event, RunRecord, Store, parse_iso
from . import CONTENT_ENV, SEMCONV_SCHEMA_URL
from ._link import LINK_OPTION, parse_traceparent, root_span_id_of, trace_id_of

_END_TYPES = {**END_EVENTS, "run.waiting": "waiting"}
_REFUSALS = {"BudgetExceededError": "budget_exceeded", "UnknownPriceError": "unknown_price"}
# Event fields that may carry user content (prompts, tool input, approval text): on spans
# only when content capture is on.
_CONTENT_KEYS = frozenset({"input", "output", "message", "action", "shown", "reason", "evidence", "args", "kwargs"})


# --------------------------------------------------------------------------- set-up


class _RunIds(RandomIdGenerator):
    """Random ids, except the ones :func:`export_run` asks for (a run's trace and root span)."""

    def __init__(self) -> None:
        self.local = threading.local()

    def generate_trace_id(self) -> int:
        fixed: int | None = getattr(self.local, "trace_id", None)
        if fixed:
            self.local.trace_id = None
            return fixed
        return super().generate_trace_id()

    def generate_span_id(self) -> int:
        fixed: int | None = getattr(self.local, "span_id", None)
        if fixed:
            self.local.span_id = None
            return fixed
        return super().generate_span_id()


@dataclass
class _Exporting:
    provider: TracerProvider
    tracer: trace.Tracer
    ids: _RunIds
    capture_content: bool


_active: _Exporting | None = None
_lock = threading.Lock()


def _content_from_env() -> bool:
    return os.environ.get(CONTENT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def setup(*, capture_content: bool | None = None, exporter: SpanExporter | None = None, batch: bool = True) -> None:
    """(Re)configure the exporter; the previous one, if any, is flushed and shut down."""
    global _active
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_{,TRACES_}ENDPOINT, _HEADERS, _TIMEOUT, …
    attrs: dict[str, Any] = {}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = "wflo"
    ids = _RunIds()
    provider = TracerProvider(resource=Resource.create(attrs), id_generator=ids, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("wflo", _version(), schema_url=SEMCONV_SCHEMA_URL)
    content = _content_from_env() if capture_content is None else capture_content
    with _lock:
        old, _active = _active, _Exporting(provider, tracer, ids, content)
    if old is not None:
        old.provider.shutdown()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("wflo")
    except Exception:
        return "0"


def is_setup() -> bool:
    return _active is not None


def shutdown() -> None:
    global _active
    with _lock:
        old, _active = _active, None
    if old is not None:
        old.provider.shutdown()


def flush(timeout_seconds: float = 10.0) -> bool:
    current = _active
    return True if current is None else bool(current.provider.force_flush(int(timeout_seconds * 1000)))


atexit.register(shutdown)  # flushes the batch of the last runs before the process exits


# --------------------------------------------------------------------------- the journal as spans


def _ns(at: str) -> int:
    dt = parse_iso(at)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _segment(events: list[Event]) -> tuple[list[Event], bool]:
    """The events since the run last waited (before its latest event), and whether they are
    the run's first stretch."""
    if not events:
        return [], True
    for i in range(len(events) - 2, -1, -1):
        if events[i].type == "run.waiting":
            return events[i + 1 :], False
    return events, True


@dataclass
class _CallRec:
    call: str
    kind: str
    name: str
    start: int
    end: int
    data: dict[str, Any]
    failed: bool
    interrupted: bool = False
    notes: list[Event] = field(default_factory=list)


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _scalars(data: dict[str, Any], prefix: str, content: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in _CONTENT_KEYS and not content:
            continue
        if isinstance(value, bool | int | float | str):
            out[f"{prefix}{key}"] = value
        elif isinstance(value, dict) and key not in ("error",):
            for k2, v2 in value.items():
                if isinstance(v2, bool | int | float | str):
                    out[f"{prefix}{key}.{k2}"] = v2
    return out


def _response_doc(output: Any) -> tuple[dict[str, Any] | None, int]:
    """The provider's answer (parsed JSON, or the first JSON chunk of a stream) and its status."""
    from ..engine._serialize import decode

    try:
        value = decode(output)
    except Exception:
        return None, 0
    if not isinstance(value, dict):
        return None, 0
    try:
        status = int(value.get("status", 200))
    except (TypeError, ValueError):
        status = 0
    body = value.get("body")
    if not isinstance(body, str):
        return None, status
    try:
        doc = json.loads(body)
        return (doc if isinstance(doc, dict) else None), status
    except ValueError:
        pass
    merged: dict[str, Any] = {}
    for chunk in sse_events(body):
        inner = chunk.get("response") or chunk.get("message") or chunk
        if isinstance(inner, dict):
            for key in ("id", "model"):
                if key in inner and key not in merged:
                    merged[key] = inner[key]
    return (merged or None), status


def _output_messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer in the semantic conventions' ``gen_ai.output.messages`` shape."""
    messages: list[dict[str, Any]] = []
    for choice in doc.get("choices") or []:
        msg = choice.get("message") or {}
        parts: list[dict[str, Any]] = []
        if msg.get("content"):
            parts.append({"type": "text", "content": msg["content"]})
        for tc in msg.get("tool_calls") or []:
            fn = tc.get("function") or {}
            parts.append(
                {"type": "tool_call", "id": tc.get("id"), "name": fn.get("name"), "arguments": fn.get("arguments")}
            )
        messages.append(
            {"role": msg.get("role", "assistant"), "parts": parts, "finish_reason": choice.get("finish_reason")}
        )
    if isinstance(doc.get("content"), list):  # Anthropic messages
        parts = []
        for block in doc["content"]:
            if block.get("type") == "text":
                parts.append({"type": "text", "content": block.get("text")})
            elif block.get("type") == "tool_use":
                parts.append(
                    {
                        "type": "tool_call",
                        "id": block.get("id"),
                        "name": block.get("name"),
                        "arguments": block.get("input"),
                    }
                )
        messages.append({"role": "assistant", "parts": parts, "finish_reason": doc.get("stop_reason")})
    if isinstance(doc.get("output"), list):  # OpenAI responses
        parts = []
        for item in doc["output"]:
            if item.get("type") == "message":
                for c in item.get("content") or []:
                    if c.get("type") == "output_text":
                        parts.append({"type": "text", "content": c.get("text")})
            elif item.get("type") == "function_call":
                parts.append(
                    {
                        "type": "tool_call",
                        "id": item.get("call_id"),
                        "name": item.get("name"),
                        "arguments": item.get("arguments"),
                    }
                )
        messages.append({"role": "assistant", "parts": parts, "finish_reason": doc.get("status")})
    return messages


def _finish_reasons(doc: dict[str, Any]) -> list[str]:
    reasons = [str(c.get("finish_reason")) for c in doc.get("choices") or [] if c.get("finish_reason")]
    if doc.get("stop_reason"):
        reasons.append(str(doc["stop_reason"]))
    return reasons


def _llm_attributes(rec: _CallRec, content: bool) -> dict[str, Any]:
    d = rec.data
    attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": rec.name}
    if d.get("provider"):
        attrs["gen_ai.provider.name"] = d["provider"]
    usage = d.get("usage") or {}
    for key, attr in (
        ("input_tokens", "gen_ai.usage.input_tokens"),
        ("output_tokens", "gen_ai.usage.output_tokens"),
        ("cached_input_tokens", "gen_ai.usage.cache_read.input_tokens"),
        ("cache_write_tokens", "gen_ai.usage.cache_creation.input_tokens"),
        ("reasoning_tokens", "gen_ai.usage.reasoning.output_tokens"),
    ):
        value = usage.get(key)
        if isinstance(value, int) and (value > 0 or key in ("input_tokens", "output_tokens")):
            attrs[attr] = value
    if "output" in d:
        doc, status = _response_doc(d["output"])
        if doc is not None:
            if doc.get("model"):
                attrs["gen_ai.response.model"] = str(doc["model"])
            if doc.get("id"):
                attrs["gen_ai.response.id"] = str(doc["id"])
            reasons = _finish_reasons(doc)
            if reasons:
                attrs["gen_ai.response.finish_reasons"] = reasons
            if content:
                attrs["gen_ai.output.messages"] = json.dumps(_output_messages(doc), default=str)
        if status >= 400:
            attrs["error.type"] = str(status)
            attrs["http.response.status_code"] = status
    cost = _num(d.get("cost_usd"))
    if cost is not None:
        attrs["wflo.cost.usd"] = cost
    if d.get("cost_estimated"):
        attrs["wflo.cost.estimated"] = True
    if d.get("price_source"):
        attrs["wflo.cost.price_source"] = str(d["price_source"])
    reserved = _num(d.get("reserved_usd"))
    if reserved is not None:
        attrs["wflo.budget.reserved_usd"] = reserved
    clamped = d.get("clamped")
    if isinstance(clamped, dict) and isinstance(clamped.get("to"), int):
        attrs["wflo.budget.clamped_max_tokens"] = clamped["to"]
        attrs["gen_ai.request.max_tokens"] = clamped["to"]
    return attrs


def _tool_attributes(rec: _CallRec, content: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": rec.name,
        "gen_ai.tool.type": "function",
    }
    if content:
        from ..engine._serialize import decode

        d = rec.data
        try:
            if "input" in d:
                args = decode(d["input"])
                attrs["gen_ai.tool.call.arguments"] = json.dumps(
                    args.get("kwargs") or args.get("args") if isinstance(args, dict) else args, default=str
                )
            if "output" in d:
                attrs["gen_ai.tool.call.result"] = json.dumps(decode(d["output"]), default=str)
        except Exception:
            pass
    return attrs


def _span_name(rec: _CallRec) -> str:
    if rec.kind == "llm":
        return f"chat {rec.name}"
    if rec.kind == "tool":
        return f"execute_tool {rec.name}"
    return f"{rec.kind} {rec.name}"


def _error_status(span: Span, error: dict[str, Any]) -> None:
    span.set_attribute("error.type", str(error.get("type") or "error"))
    span.set_status(Status(StatusCode.ERROR, str(error.get("message") or error.get("type") or "error")))


def _loop_event_attrs(data: dict[str, Any], content: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {"wflo.loop.detector": str(data.get("detector", ""))}
    ev = data.get("evidence") or {}
    for key in ("summary", "kind", "name", "count", "limit", "window", "spent", "period"):
        value = ev.get(key)
        if isinstance(value, bool | int | float | str):
            attrs[f"wflo.loop.{key}"] = value
    if data.get("call"):
        attrs["wflo.call.id"] = str(data["call"])
    return attrs


def _refusal_attrs(error: dict[str, Any]) -> dict[str, Any]:
    fields = error.get("fields") or {}
    attrs: dict[str, Any] = {
        "wflo.budget.reason": _REFUSALS.get(str(error.get("type")), str(error.get("code"))),
        "exception.type": str(error.get("type")),
        "exception.message": str(error.get("message", "")),
    }
    if fields.get("scope"):
        attrs["wflo.budget.scope"] = str(fields["scope"])
    for key in ("limit", "spent", "reserved", "requested"):
        value = _num(fields.get(key))
        if value is not None:
            attrs[f"wflo.budget.{key}_usd"] = value
    if fields.get("model"):
        attrs["gen_ai.request.model"] = str(fields["model"])
    return attrs


def _calls(events: Iterable[Event], end_ns: int) -> dict[str, _CallRec]:
    calls: dict[str, _CallRec] = {}
    started: dict[str, Event] = {}
    resumes: list[int] = []
    notes: dict[str, list[Event]] = {}
    for e in events:
        d = e.data
        if e.type == "call.started":
            started[str(d.get("call"))] = e
        elif e.type in ("call.completed", "call.failed"):
            call = str(d.get("call"))
            end = _ns(e.at)
            ms = _num(d.get("ms")) or 0.0
            calls[call] = _CallRec(
                call, str(d.get("kind")), str(d.get("name")), end - int(ms * 1_000_000), end, d, e.type == "call.failed"
            )
        elif e.type == "run.resumed":
            resumes.append(_ns(e.at))
        elif e.type in ("call.retry", "loop.stopped"):
            notes.setdefault(str(d.get("call")), []).append(e)
    # A call in flight when its process died: a span up to the resume (the call ran again or
    # was refused as at-most-once; either way it has its own event).
    for call, e in started.items():
        if call in calls:
            continue
        start = _ns(e.at)
        end = next((t for t in resumes if t >= start), end_ns)
        calls[call] = _CallRec(call, str(e.data.get("kind")), str(e.data.get("name")), start, end, e.data, True, True)
    for call, found in notes.items():
        if call in calls:
            calls[call].notes.extend(found)
    return calls


def _caller_links(options: dict[str, Any]) -> list[Link]:
    """The link to the span that started the run (recorded with the run at its start)."""
    parsed = parse_traceparent(str(options.get(LINK_OPTION) or ""))
    if parsed is None:
        return []
    trace_id, span_id, sampled = parsed
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    caller = SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)
    return [Link(caller, {"wflo.link": "caller"})]


def export_run(store: Store, run_id: str) -> int:
    """Build and hand to the exporter the spans of the run's latest stretch; returns the count."""
    current = _active
    if current is None:
        return 0
    record = store.get_run(run_id)
    events, first = _segment(store.events(run_id))
    if not events:
        return 0
    return _emit(current, record, events, first)


def _emit(cur: _Exporting, record: RunRecord, events: list[Event], first: bool) -> int:
    content = cur.capture_content
    last = events[-1]
    begin = next((e for e in events if e.type in ("run.started", "run.resumed")), events[0])
    start_ns, end_ns = _ns(begin.at), _ns(last.at)
    status = _END_TYPES.get(last.type, record.status)
    trace_id, root_id = trace_id_of(record.id), root_span_id_of(record.id)
    calls = _calls(events, end_ns)
    options = record.options or {}
    budget = options.get("budget") or {}
    agent = options.get("agent")
    operation = "invoke_agent" if isinstance(agent, str) and agent else "invoke_workflow"
    root_attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.workflow.name": record.workflow,
        "wflo.run.id": record.id,
        "wflo.run.status": status,
        "wflo.run.attempts": record.attempts,
        "wflo.run.first_stretch": first,
    }
    if operation == "invoke_agent":
        root_attrs["gen_ai.agent.name"] = agent
    if record.tenant:
        root_attrs["wflo.tenant"] = record.tenant
    if record.parent_id:
        root_attrs["wflo.run.parent_id"] = record.parent_id
    limit = _num(budget.get("usd"))
    if limit is not None:
        root_attrs["wflo.budget.limit_usd"] = limit
    costs = [_num(c.data.get("cost_usd")) for c in calls.values() if c.kind == "llm"]
    root_attrs["wflo.cost.usd"] = sum(c for c in costs if c is not None)
    refusals = [c for c in calls.values() if c.failed and str((c.data.get("error") or {}).get("type")) in _REFUSALS]
    root_attrs["wflo.budget.refusals"] = len(refusals)

    if first:
        # An empty context, not the current one: an application span open around run() (a
        # request handler, say) must not adopt the run's first stretch into its own trace
        # while later stretches use the run's; the caller gets a link instead.
        cur.ids.local.trace_id, cur.ids.local.span_id = trace_id, root_id
        parent_ctx = otel_context.Context()
    else:
        parent = SpanContext(trace_id, root_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        parent_ctx = trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())
    try:
        root = cur.tracer.start_span(
            f"{operation} {agent if operation == 'invoke_agent' else record.workflow}",
            context=parent_ctx,
            kind=SpanKind.INTERNAL,
            attributes=root_attrs,
            start_time=start_ns,
            links=_caller_links(options),
        )
    finally:
        cur.ids.local.trace_id = cur.ids.local.span_id = None
    count = 1
    spans: dict[str, Span] = {}
    for rec in sorted(calls.values(), key=lambda r: (r.call.count("."), r.start)):
        parent_call = rec.call.rpartition(".")[0]
        parent_span = spans.get(parent_call, root)
        attrs: dict[str, Any] = {"wflo.run.id": record.id, "wflo.call.id": rec.call, "wflo.call.kind": rec.kind}
        if rec.kind == "llm":
            attrs.update(_llm_attributes(rec, content))
        elif rec.kind == "tool":
            attrs.update(_tool_attributes(rec, content))
        if _num(rec.data.get("attempts")) is not None:
            attrs["wflo.call.attempts"] = int(rec.data["attempts"])
        span = cur.tracer.start_span(
            _span_name(rec),
            context=trace.set_span_in_context(parent_span),
            kind=SpanKind.CLIENT if rec.kind == "llm" else SpanKind.INTERNAL,
            attributes=attrs,
            start_time=rec.start,
        )
        spans[rec.call] = span
        count += 1
        for note in rec.notes:
            if note.type == "loop.stopped":
                span.add_event("wflo.loop.stopped", _loop_event_attrs(note.data, content), timestamp=_ns(note.at))
            else:
                err = note.data.get("error") or {}
                span.add_event(
                    "wflo.call.retry",
                    {"wflo.call.attempt": int(note.data.get("attempt") or 0), "error.type": str(err.get("type", ""))},
                    timestamp=_ns(note.at),
                )
        error = rec.data.get("error")
        if rec.interrupted:
            span.set_attribute("error.type", "interrupted")
            span.set_status(Status(StatusCode.ERROR, "the process running the call died; the run was resumed"))
        elif rec.failed and isinstance(error, dict):
            if str(error.get("type")) in _REFUSALS:
                span.add_event("wflo.budget.refused", _refusal_attrs(error), timestamp=rec.end)
            _error_status(span, error)
        elif "error.type" in attrs:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {attrs['error.type']}"))
        span.end(end_time=max(rec.end, rec.start))

    for e in events:
        if e.type == "loop.stopped":
            root.add_event("wflo.loop.stopped", _loop_event_attrs(e.data, content), timestamp=_ns(e.at))
        elif e.type == "budget.threshold":
            root.add_event("wflo.budget.threshold", _scalars(e.data, "wflo.budget.", content), timestamp=_ns(e.at))
        elif e.type.startswith("approval.") or e.type in ("run.resumed", "run.waiting"):
            root.add_event(f"wflo.{e.type}", _scalars(e.data, "wflo.", content), timestamp=_ns(e.at))
    error = last.data.get("error") if last.type in ("run.failed", "run.stopped", "run.cancelled") else None
    if isinstance(error, dict):
        _error_status(root, error)
    root.end(end_time=end_ns)
    return count
