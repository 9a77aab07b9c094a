"""The content policy: what the journal keeps of LLM completions.

The hash chain is forever, so it holds what the policy allows: the completion with secrets
redacted (``full``), also passed through the user's redactors (``redacted``), or nothing but
its SHA-256 (``hash_only``). Prompts are never stored (their digest is). Crash recovery still
needs the exact response while the run can resume, so when the chain's copy differs, the
response is kept apart in ``payloads`` (not chained), written in the same transaction as the
call's event, read back when the call is replayed, and deleted with the run's final event.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from typing import Any

from .._errors import UserError
from ..engine import Call, Guard, Outcome
from . import _tables

MODES = ("full", "redacted", "hash_only")

PAYLOADS_KEPT = "audit.payloads_kept"
"""The key, in a run context's ``state``, set once this execution kept a payload: its end
must then drop them even if the run is fresh (see ``wflo._wiring.finish_ops``)."""

# Credentials that must never land in a permanent record, whatever the policy.
SECRETS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("anthropic-key", re.compile(r"sk-ant-[A-Za-z0-9_\-]{16,}")),
    ("openai-key", re.compile(r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}")),
    ("aws-access-key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github-token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("slack-token", re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}")),
    ("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b")),
    ("bearer-token", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{20,}=*")),
    ("private-key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)),
)

_redactors: list[Callable[[str], str]] = []
_lock = threading.Lock()


def add_redactor(fn: Callable[[str], str]) -> Callable[[str], str]:
    """Register ``fn(text) -> text`` for ``content="redacted"`` (usable as a decorator).

    It receives the provider's raw response text (JSON, or server-sent events for a stream)
    and must return text of the same kind: replace what must not be kept (names, emails, …)
    with a placeholder without quotes or backslashes.
    """
    if not callable(fn):
        raise UserError(f"add_redactor takes a function text -> text, got {fn!r}")
    with _lock:
        _redactors.append(fn)
    return fn


def clear_redactors() -> None:
    with _lock:
        _redactors.clear()


def redact_secrets(text: str) -> str:
    for name, pattern in SECRETS:
        text = pattern.sub(f"[REDACTED:{name}]", text)
    return text


def kept(text: str, mode: str) -> str:
    """What the chain keeps of ``text`` under ``mode``."""
    if mode == "hash_only":
        return ""
    text = redact_secrets(text)
    if mode == "redacted":
        with _lock:
            redactors = list(_redactors)
        for fn in redactors:
            out = fn(text)
            if not isinstance(out, str):
                raise UserError(f"redactor {fn!r} returned {type(out).__name__}, not str")
            text = out
    return text


class ContentGuard(Guard):
    """First in the chain, so its ``after`` runs last: every other guard (the budget reading
    usage, the loop guard hashing the answer) has seen the real response before the chain's
    copy is reduced to what the policy keeps."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise UserError(f"content must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode

    def after(self, call: Call, outcome: Outcome) -> None:
        value = outcome.value
        if call.kind != "llm" or not isinstance(value, dict) or not isinstance(value.get("body"), str):
            return
        body: str = value["body"]
        chained = kept(body, self.mode)
        if chained == body:
            return
        outcome.value = {
            **value,
            "body": chained,
            "body_sha256": hashlib.sha256(body.encode()).hexdigest(),
            "content": self.mode,
        }
        store, run_id, call_id = call.run.store, call.run.run_id, call.call_id

        def keep_payload(cur: Any) -> None:
            _tables.keep_payload(store, cur, run_id, call_id, body)

        call.ops.append(keep_payload)
        call.run.state[PAYLOADS_KEPT] = True  # set before the op commits: never missed


def payload(store: Any, run_id: str, call_id: str) -> str | None:
    """The exact response of a replayed call whose chained copy was reduced, if still kept."""
    return _tables.payload_body(store, run_id, call_id)


def drop_payloads(store: Any, run_id: str, status: str) -> Any:
    """The finish op: a run that ended (any final status, ``failed`` included: a failed run is
    never resumed) no longer needs its exact responses. A run that may still resume (``blocked``
    by non-determinism or a full disk, ``waiting``, interrupted) has not ended and keeps them."""

    def op(cur: Any) -> None:
        _tables.drop_payloads(store, cur, run_id)

    return op
