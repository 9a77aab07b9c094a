"""Trace identity of a run, and the link from whoever started it.

Light on purpose (no OpenTelemetry import at module level): the engine calls it at every
start, with or without the ``otel`` extra. A caller's span is read only when the
application has already imported ``opentelemetry`` itself; no span can be open otherwise.

A run's spans all live in the trace derived from its run id, whatever context is current
when they are built (a run has many stretches, in many processes, and only the first one
sees the caller). The caller is not lost: its span context is recorded with the run, as a
W3C ``traceparent``, when the run is created, and every stretch's root span links to it.
"""

from __future__ import annotations

import hashlib
import re
import sys
from typing import Any

from .._errors import UserError

# W3C Trace Context, version 00: version-traceid-parentid-flags, lower-case hex; all-zero
# trace or span ids are invalid (https://www.w3.org/TR/trace-context/#traceparent-header).
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
LINK_OPTION = "trace_link"
"""The run option holding the caller's ``traceparent`` (read by every stretch's export)."""


def _hash_int(text: str, hex_digits: int) -> int:
    value = int(hashlib.sha256(text.encode()).hexdigest()[:hex_digits], 16)
    return value or 1


def trace_id_of(run_id: str) -> int:
    """The trace id of a run's spans (all its stretches share it)."""
    return _hash_int(f"wflo-trace:{run_id}", 32)


def root_span_id_of(run_id: str) -> int:
    """The span id of the root span of a run's first stretch."""
    return _hash_int(f"wflo-root:{run_id}", 16)


def format_traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """``(trace_id, span_id, sampled)`` of a W3C ``traceparent``, or None when it is not valid
    (the spec says to ignore an invalid header, not to fail the request)."""
    m = _TRACEPARENT.match(value.strip()) if isinstance(value, str) else None
    if m is None or m.group(1) == "ff" or (m.group(1) == "00" and m.group(5)):
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(m.group(4), 16) & 1)


def _current_span() -> Any:
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    span = trace.get_current_span()
    return span if span.get_span_context().is_valid else None


def link_for_start(traceparent: str | None, parent_run_id: str | None) -> str | None:
    """The ``traceparent`` a new run records as its caller.

    ``traceparent`` given (a server passing the incoming header on): that one, checked; ``""``
    records no link. Otherwise a child run links to its parent run's root span, and a
    top-level run to the OpenTelemetry span current in the caller, if any.
    """
    if traceparent is not None:
        if traceparent == "":
            return None
        parsed = parse_traceparent(traceparent)
        if parsed is None:
            raise UserError(
                f"traceparent {traceparent!r} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>); "
                "pass the header as received, or '' for no link"
            )
        return format_traceparent(*parsed)
    if parent_run_id is not None:
        return format_traceparent(trace_id_of(parent_run_id), root_span_id_of(parent_run_id))
    span = _current_span()
    if span is None:
        return None
    sc = span.get_span_context()
    return format_traceparent(sc.trace_id, sc.span_id, bool(sc.trace_flags & 1))


def note_on_caller(run_id: str, workflow: str) -> None:
    """Mark the caller's current span with the run it started, so the request finds the run:
    the ``wflo.run.id`` attribute (the latest run) and one ``wflo.run.started`` event per run."""
    span = _current_span()
    if span is None or not span.is_recording():
        return
    try:
        span.set_attribute("wflo.run.id", run_id)
        span.add_event("wflo.run.started", {"wflo.run.id": run_id, "gen_ai.workflow.name": workflow})
    except Exception:  # the application's span: never let its quirks fail the start
        pass
