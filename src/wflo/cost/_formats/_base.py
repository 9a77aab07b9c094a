"""The typed contract of the call boundary for LLM requests: :class:`LLMRequest` and :class:`Format`.

A format module knows one provider API's wire shape, in both directions:

* request → an upper bound on what the request can be billed (input tokens, output tokens per
  choice and the number of choices), where its output cap lives (to write a default in, or
  lower it so the call fits the budget), and the shapes whose cost cannot be bounded (refused);
* recorded response or stream → the usage the provider reported.

Input bound: byte-level BPE and SentencePiece tokenizers never make more tokens than the UTF-8
bytes of the text, and everything a provider turns into prompt tokens (messages, system text,
tool and response schemas, tool calls) is text inside the JSON body. So the bound is the UTF-8
size of the whole body (keys and punctuation included: an over-count, released at settle) plus
an allowance per JSON object for chat-template markers and the tool-rendering wrapper. A media
part (image, file, PDF, audio, video) is billed by per-model rules that are approximate or
depend on page counts, so a request carrying one is bounded by the model's context window (the
provider refuses a longer input), and refused when that window is unknown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..._errors import UnboundedRequestError
from .._usage import Usage

DEFAULT_OUTPUT_CAP = 4096
PER_OBJECT = 8
"""Tokens allowed per JSON object (message, part, tool) for template markers."""
PER_TOOL = 64
"""Tokens allowed per tool definition for the wrapper a provider renders tools into."""

_MEDIA_TYPES = frozenset(
    {"image_url", "image", "input_image", "file", "input_file", "document", "input_audio", "audio", "video"}
)
_MEDIA_KEYS = frozenset({"inlineData", "inline_data", "fileData", "file_data", "image", "document", "video", "audio"})


@dataclass(slots=True)
class LLMRequest:
    """One LLM request as the guards see it (built by the HTTP interception, read by the budget)."""

    fmt: Format
    """The API format (chat completions, responses, messages, …)."""
    model: str
    provider: str
    """Price-book provider id (``openai``, ``anthropic``, ``google``, ``aws``, …)."""
    host: str
    path: str
    client: str
    """The HTTP client that sent it (``httpx``, ``botocore``, …)."""
    body: dict[str, Any]
    """The request document; the budget may write into it (output cap)."""
    stream: bool = False
    changed: bool = False
    """The body was rewritten (cap written in or lowered, usage asked for): send the new one."""
    hide_usage: bool = False
    """wflo asked a stream for its usage; the caller did not: the usage chunk is kept from it."""
    state_tokens: int = 0
    """Input tokens of server-side conversation state (``previous_response_id``), billed as input."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Facts for the call's event."""

    @property
    def api(self) -> str:
        return self.fmt.api

    @property
    def choices(self) -> int:
        return self.fmt.choices(self.body)

    @property
    def output_cap(self) -> int | None:
        return self.fmt.get_cap(self.body)

    def set_output_cap(self, value: int) -> None:
        self.fmt.set_cap(self.body, value, self.provider)
        self.changed = True


class Format:
    """One provider API format. Subclasses override what differs; see the module docstring."""

    api: ClassVar[str] = ""
    cap_fields: ClassVar[tuple[str, ...]] = ("max_tokens",)
    """Where the output cap may be (first one found wins; the first is written when absent)."""
    default_cap: ClassVar[int | None] = DEFAULT_OUTPUT_CAP
    """Written into a request that has no cap (``None``: the format has no output)."""

    def matches(self, path: str) -> bool:
        raise NotImplementedError

    def model(self, body: dict[str, Any], path: str) -> str:
        if body.get("model"):
            return str(body["model"])
        if "/deployments/" in path:  # Azure OpenAI names the deployment in the path
            return path.split("/deployments/", 1)[1].split("/", 1)[0]
        return "unknown"

    def is_stream(self, body: dict[str, Any], path: str) -> bool:
        return bool(body.get("stream"))

    # ----------------------------------------------------------------- output cap
    def cap_field(self, body: dict[str, Any], provider: str) -> str:
        for name in self.cap_fields:
            if _get(body, name) is not None:
                return name
        return self.cap_fields[0]

    def get_cap(self, body: dict[str, Any]) -> int | None:
        """The output cap the request sets: the largest of its cap fields (a server may read
        any one of them: ``max_completion_tokens=10`` beside ``max_tokens=100000`` was bounded
        at 10 while a server reading ``max_tokens`` could bill 100,000). ``None`` when none is
        set, or one is not a positive integer (a lenient server reads ``"100000"`` as a
        number): the request then gets a cap written into each of them."""
        caps = []
        for name in self.cap_fields:
            value = _get(body, name)
            if value is None:
                continue
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                return None
            caps.append(value)
        return max(caps) if caps else None

    def set_cap(self, body: dict[str, Any], value: int, provider: str = "") -> None:
        """Write ``value`` into every cap field the request has (the one the provider reads
        when it has none: OpenAI's reasoning models refuse ``max_tokens``)."""
        present = [name for name in self.cap_fields if _get(body, name) is not None]
        for name in present or [self.cap_field(body, provider)]:
            _set(body, name, value)

    def choices(self, body: dict[str, Any]) -> int:
        """How many outputs, each up to the cap, the request is billed for."""
        return 1

    # ----------------------------------------------------------------- bounds
    def check(self, req: LLMRequest) -> None:
        """Refuse (``UnboundedRequestError``) a shape whose cost cannot be bounded."""

    def input_tokens(self, req: LLMRequest, context_window: int | None) -> int:
        """Upper bound on the input tokens billed (server-side state included)."""
        if has_media(req.body):
            if context_window is None:
                raise self.unbounded(
                    req, "it has an image, file or audio part and the model's context window is unknown"
                )
            req.notes["input_bound"] = "context_window"
            return context_window
        total = body_bound(req.body) + req.state_tokens
        return min(total, context_window) if context_window else total

    def extra_output_tokens(self, req: LLMRequest) -> int:
        """Output tokens billed beyond ``choices x cap`` (thinking a cap does not include)."""
        return 0

    def prepare_stream(self, req: LLMRequest) -> None:
        """Ask the provider for a stream's usage where the API allows it."""

    # ----------------------------------------------------------------- responses
    def usage(self, document: dict[str, Any]) -> Usage | None:
        """Usage of a non-streamed response document."""
        raise NotImplementedError

    def stream_usage(self, events: list[dict[str, Any]]) -> Usage | None:
        """Usage of a stream's events (the last report wins)."""
        for ev in reversed(events):
            found = self.usage(ev)
            if found is not None:
                return found
        return None

    def streamed_text(self, events: list[dict[str, Any]]) -> str:
        """The output text a stream carried (for a stream that ended without usage)."""
        return ""

    def response_id(self, document: dict[str, Any]) -> str | None:
        return None

    def unbounded(self, req: LLMRequest, reason: str) -> UnboundedRequestError:
        return UnboundedRequestError(api=self.api, model=req.model, reason=reason)


def _get(body: dict[str, Any], dotted: str) -> Any:
    value: Any = body
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _set(body: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    target = body
    for key in parents:
        nxt = target.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            target[key] = nxt
        target = nxt
    target[last] = value


def has_media(value: Any) -> bool:
    """Whether a request document carries an image, file, audio or video part anywhere."""
    if isinstance(value, dict):
        if value.get("type") in _MEDIA_TYPES or any(key in value for key in _MEDIA_KEYS if value.get(key)):
            return True
        return any(has_media(v) for v in value.values() if isinstance(v, dict | list))
    if isinstance(value, list):
        return any(has_media(v) for v in value if isinstance(v, dict | list))
    return False


def _objects(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_objects(v) for v in value.values() if isinstance(v, dict | list))
    if isinstance(value, list):
        return sum(_objects(v) for v in value if isinstance(v, dict | list))
    return 0


def body_bound(body: dict[str, Any]) -> int:
    """Upper bound on the prompt tokens of a text-only request document (see module docstring)."""
    size = len(json.dumps(body, ensure_ascii=False, default=str).encode("utf-8"))
    tools = body.get("tools")
    n_tools = len(tools) if isinstance(tools, list) else 0
    return max(1, size + PER_OBJECT * _objects(body) + PER_TOOL * n_tools)


def positive_int(value: Any, default: int = 1) -> int:
    """A count the request asks for (``n``, ``best_of``, ``candidateCount``), as a server would
    read it: a whole number also as a float or text (a lenient server such as vLLM takes
    ``"8"`` and ``8.0`` as 8 and bills eight outputs; this read them as the default, 1)."""
    if isinstance(value, bool):
        return default
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return default
    if isinstance(value, float):
        if not value.is_integer():
            return default
        value = int(value)
    return value if isinstance(value, int) and value > 0 else default


def openai_usage(document: dict[str, Any]) -> Usage | None:
    """Usage in OpenAI's chat/completions/embeddings shape (``prompt_tokens``, …)."""
    u = document.get("usage")
    if not isinstance(u, dict) or "prompt_tokens" not in u:
        return None
    details = u.get("prompt_tokens_details") or {}
    out_details = u.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(u.get("prompt_tokens") or 0),
        output_tokens=int(u.get("completion_tokens") or 0),
        cached_input_tokens=int(details.get("cached_tokens") or 0),
        reasoning_tokens=int(out_details.get("reasoning_tokens") or 0),
    )
