"""Provider-client interception at the HTTP layer: the universal way wflo sees LLM calls.

The ``openai`` and ``anthropic`` SDKs (and LiteLLM, and frameworks built on them)
send every request through ``httpx``/``httpx2`` ``Client.send``. wflo wraps ``send`` once per
process: a request of an API format wflo understands (``wflo.cost._formats``: chat
completions, responses, legacy completions, embeddings, messages, Gemini, Bedrock Converse)
made inside a run becomes a guarded, journaled call of kind ``llm``, carrying a typed
:class:`~wflo.cost._formats.LLMRequest`:

* before it is sent, the guard chain runs (loop guard, approvals, budget reserve, which may
  write or lower the body's output cap, or refuse the call: then nothing is sent); a stream
  is asked for its usage (``stream_options.include_usage``), the extra chunk kept from a
  caller who did not ask for it;
* the response (status, a few headers, the body; for a stream the whole event stream, kept
  as it passes through to the caller) is recorded, and the guards settle on the usage the
  provider reported;
* on replay the recorded response is returned without any HTTP request, so the SDK parses
  the same bytes again and a resumed run never pays twice for a finished call.

Any other request to an LLM provider inside a run is refused before it is sent (``_egress``).
Working at this layer keeps wflo independent of each SDK's method surface (sync, async,
streaming, ``with_raw_response``, every endpoint shares it).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import importlib
import inspect
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NamedTuple

from .._errors import UserError, WfloError
from ..cost._formats import Format, LLMRequest, detect
from ..engine import NOT_REPLAYED, Call, Outcome, current_run, finish_call, start_call
from ..engine._attempts import Attempts, LoopWait, Step, adrive, drive
from ..guards._policies import ProviderStatusError
from ..guards._retry import is_retryable, retryable_status
from . import _egress
from ._egress import check as _egress_check
from ._egress import egress, understood

_KEEP_HEADERS = ("content-type", "retry-after", "x-request-id", "request-id")
_installed: set[str] = set()
_lock = threading.Lock()

# Set by wflo.init(): a run to record calls made outside any workflow.
implicit_run: Callable[[], Any] | None = None

_BY_FORMAT = {"messages": "anthropic", "gemini": "google", "bedrock": "aws"}
_BY_HOST = (("anthropic", "anthropic"), ("openai.azure", "azure"), ("groq", "groq"), ("mistral", "mistral"),
            ("deepseek", "deepseek"), ("together", "together"), ("fireworks", "fireworks"),
            ("openrouter", "openrouter"), ("x.ai", "x-ai"), ("googleapis", "google"), ("cohere", "cohere"),
            ("openai", "openai"))  # fmt: skip


def run_context() -> Any:
    """The guarded run a request belongs to: the current one, else ``wflo.init()``'s, else ``None``."""
    ctx = current_run()
    if ctx is None and implicit_run is not None:
        ctx = implicit_run()
    return ctx


def provider_of(fmt: Format, host: str, port: int | None = None, path: str = "") -> str:
    """The price-book provider of a request: the registered base URL's, the known host's, the
    format's own (Anthropic, Gemini, Bedrock), else OpenAI (compatible servers)."""
    registered = egress.provider_for(host, port, path)
    if registered is not None:
        return registered
    for needle, name in _BY_HOST:
        if needle in host:
            return name
    return _BY_FORMAT.get(fmt.api, "openai")


def install() -> list[str]:
    """Wrap ``send`` of ``httpx``/``httpx2`` clients (whichever are installed), and put the
    closed-world gate into the other HTTP clients (``_egress``). Idempotent; called at every
    run's start. A library that cannot be imported is looked for once, then wrapped when it is
    imported (``_egress``'s import hook): a failed import searches ``sys.path`` (~0.1 ms), which
    every run paid where ``httpx2`` is not installed (issue 20)."""
    _egress.current_run = run_context
    _egress.install()
    with _lock:
        for name in ("httpx2", "httpx"):
            if name in _installed or name in _watched:
                continue
            try:
                mod = importlib.import_module(name)
            except ImportError:
                _watched.add(name)
                _egress.on_import(name, functools.partial(_wrap_imported, name))
                continue
            _wrap(mod)
            _installed.add(name)
        return sorted(_installed)


_watched: set[str] = set()
"""The libraries ``install`` could not import: wrapped by ``_wrap_imported`` if they are later."""


def _wrap_imported(name: str, mod: Any) -> None:
    """Wrap ``mod``, the library ``name`` imported after ``install`` looked for it, once."""
    with _lock:
        if name in _installed:
            return
        _installed.add(name)
    _wrap(mod)


def _wrap(mod: Any) -> None:
    sync_send = mod.Client.send
    async_send = mod.AsyncClient.send
    # The response's stream must stay an instance of the library's own stream classes.
    sync_recorder = type("SyncRecorder", (_SyncRecorder, mod.SyncByteStream), {})
    async_recorder = type("AsyncRecorder", (_AsyncRecorder, mod.AsyncByteStream), {})

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        fmt = _gate(request)
        ctx = run_context() if fmt is not None else None
        if ctx is None or fmt is None:
            token = _passing.set(request)
            try:
                return sync_send(self, request, *args, **kwargs)
            finally:
                _passing.reset(token)
        io = _SyncIO(lambda r: sync_send(self, r, *args, **kwargs), sync_recorder)
        return drive(_attempts(mod, ctx, fmt, request), io)

    async def asend(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        fmt = _gate(request)
        ctx = run_context() if fmt is not None else None
        if ctx is None or fmt is None:
            token = _passing.set(request)
            try:
                return await async_send(self, request, *args, **kwargs)
            finally:
                _passing.reset(token)
        io = _AsyncIO(lambda r: async_send(self, r, *args, **kwargs), async_recorder)
        io.run = ctx
        return await adrive(_attempts(mod, ctx, fmt, request), io)

    send.__wflo_wrapped__ = sync_send  # type: ignore[attr-defined]
    asend.__wflo_wrapped__ = async_send  # type: ignore[attr-defined]
    mod.Client.send = send
    mod.AsyncClient.send = asend
    _wrap_hops(mod)


_passing: contextvars.ContextVar[Any] = contextvars.ContextVar("wflo_httpx_passing", default=None)
"""The request an httpx ``send`` let through unguarded (not an LLM request), while it is sent."""


def _wrap_hops(mod: Any) -> None:
    """Gate each further hop of a request ``send`` let through unguarded: httpx follows a
    redirect inside ``send`` (the openai and anthropic clients follow them), and a 307 or 308
    keeps the method and the body, so a redirect could carry an LLM request past the budget
    and the closed world. Such a hop is refused before it is sent."""
    sync_single = getattr(mod.Client, "_send_single_request", None)
    async_single = getattr(mod.AsyncClient, "_send_single_request", None)
    if sync_single is None or async_single is None:  # not this library's layout: nothing to gate
        return

    def single(self: Any, request: Any) -> Any:
        first = _passing.get()
        if first is not None and first is not request:
            _gate_hop(request)
        return sync_single(self, request)

    async def asingle(self: Any, request: Any) -> Any:
        first = _passing.get()
        if first is not None and first is not request:
            _gate_hop(request)
        return await async_single(self, request)

    single.__wflo_wrapped__ = sync_single  # type: ignore[attr-defined]
    asingle.__wflo_wrapped__ = async_single  # type: ignore[attr-defined]
    mod.Client._send_single_request = single
    mod.AsyncClient._send_single_request = asingle


def _gate_hop(hop: Any) -> None:
    """A redirect hop of a request sent unguarded: refused, inside a guarded run, when it is an
    LLM request (it would be sent unpriced) or goes to an LLM provider's unpriced endpoint."""
    url = hop.url
    try:
        _egress.redirect_check("httpx", hop.method, url.host, url.port, url.path)
    except WfloError as exc:
        raise sdk_visible(exc) from None


def _attempts(mod: Any, ctx: Any, fmt: Format, request: Any) -> Attempts[Any]:
    """The attempts of one intercepted LLM request, written once for sync and async clients
    (``wflo.engine._attempts``): each attempt is its own journaled, budgeted call; after a
    failure the model's retry policy, then ``wflo.integrations.fallback``, say what is sent next (recorded,
    so a replay follows the same path without waiting)."""
    attempt, replaced = 0, None
    while True:
        attempt += 1
        call, request, replayed = yield Step("begin", functools.partial(_begin, mod, ctx, fmt, request, replaced))
        if replayed is not NOT_REPLAYED:
            after = _after_failure(call, mod, request, attempt, None, None, live=False)
            if after is None:
                if isinstance(replayed, _ReplayedFailure):
                    raise replayed.error
                return replayed
            request, attempt, _, replaced = after
            continue
        _set_timeout(call, request)
        t0 = time.perf_counter()
        try:
            response = yield Step("send", request)
        except BaseException as exc:
            after = _after_failure(call, mod, request, attempt, None, exc, live=True)
            try:  # records the failed attempt, and raises its error (or a guard's refusal)
                outcome = Outcome(error=exc, duration_ms=(time.perf_counter() - t0) * 1000)
                yield Step("store", functools.partial(_finish, call, outcome))
            except BaseException as raised:
                if after is None or raised is not exc:
                    raise
            if after is None:  # finish_call raises the call's error: never reached
                raise exc
            yield Step("sleep", (after.delay, ctx.check_cancelled))
            request, attempt, _, replaced = after
            continue
        after = _after_failure(call, mod, request, attempt, response, None, live=True)
        if after is not None:
            yield Step("read", response)
            yield Step("store", functools.partial(_end, call, response, response.content, True, t0))
            yield Step("close", response)
            yield Step("sleep", (after.delay, ctx.check_cancelled))
            request, attempt, _, replaced = after
            continue
        if _is_stream(response):
            return (yield Step("record", (response, call, t0)))
        yield Step("read", response)
        yield Step("store", functools.partial(_end, call, response, response.content, True, t0))
        return response


class _SyncIO:
    """The effects of :func:`_attempts` for a synchronous httpx client."""

    def __init__(self, send: Callable[[Any], Any], recorder: type[_SyncRecorder]) -> None:
        self._send, self._recorder = send, recorder

    def send(self, request: Any) -> Any:
        with understood():  # a transport below httpx (LiteLLM's aiohttp) must let it pass
            return self._send(request)

    def read(self, response: Any) -> None:
        response.read()

    def close(self, response: Any) -> None:
        response.close()

    def record(self, item: tuple[Any, Call, float]) -> Any:
        response, call, t0 = item
        response.stream = self._recorder(response, call, t0, _hide(call))
        return response


class _AsyncIO:
    """The effects of :func:`_attempts` for an asynchronous httpx client."""

    run: Any = None
    """The run whose store the ``"store"`` steps go to (``adrive`` reads it)."""

    def __init__(self, send: Callable[[Any], Any], recorder: type[_AsyncRecorder]) -> None:
        self._send, self._recorder = send, recorder

    async def send(self, request: Any) -> Any:
        with understood():
            return await self._send(request)

    async def read(self, response: Any) -> None:
        await response.aread()

    async def close(self, response: Any) -> None:
        await response.aclose()

    async def record(self, item: tuple[Any, Call, float]) -> Any:
        response, call, t0 = item
        response.stream = self._recorder(response, call, t0, _hide(call))
        return response


_sdk_types: dict[type[WfloError], type[WfloError]] = {}


def _sdk_bases() -> tuple[type, ...]:
    bases = []
    for module, name in (("openai", "OpenAIError"), ("anthropic", "AnthropicError")):
        mod = sys.modules.get(module)
        base = getattr(mod, name, None) if mod is not None else None
        if isinstance(base, type):
            bases.append(base)
    return tuple(bases)


def sdk_visible(exc: WfloError) -> WfloError:
    """The same refusal, as an instance that is also each loaded SDK's own error type.

    The SDKs wrap anything else raised inside ``send`` as a connection error (and retry it);
    their own error types they pass through unchanged. So a budget refusal or a loop stop
    reaches the agent as ``wflo.BudgetExceededError`` (catchable as such), not as
    "Connection error", and is not retried.
    """
    bases = _sdk_bases()
    cls = type(exc)
    if not bases or isinstance(exc, bases):
        return exc
    sub = _sdk_types.get(cls)
    if sub is None:
        sub = type(cls.__name__, (cls, *bases), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
        _sdk_types[cls] = sub
    new: WfloError = Exception.__new__(sub)
    new.__dict__.update(exc.__dict__)
    new.args = exc.args
    new._wflo_class = cls  # type: ignore[attr-defined]  # read by WfloError.__reduce__
    return new


def _is_stream(response: Any) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


def _gate(request: Any) -> Format | None:
    """The format of an LLM request wflo understands, or ``None``; a request to an LLM
    provider it does not understand, inside a guarded run, is refused here (not sent)."""
    url = request.url
    fmt = detect(request.method, url.path)
    if fmt is None:
        try:
            _egress_check("httpx", request.method, url.host, url.port, url.path)
        except WfloError as exc:
            raise sdk_visible(exc) from None
    return fmt


def _hide(call: Call) -> bool:
    req: LLMRequest = call.meta["request"]
    return req.hide_usage


def exact_body(ctx: Any, call: Call, replayed: Any) -> dict[str, Any]:
    """A replayed recorded response, with its exact body where the chain keeps less."""
    if isinstance(replayed, dict) and replayed.get("body_sha256"):
        # The chain keeps less than the response (the content policy): the exact one is
        # kept apart while the run can still be replayed.
        from ..audit._content import payload

        exact = payload(ctx.store, ctx.run_id, call.call_id)
        if exact is not None:
            replayed = {**replayed, "body": exact}
    return replayed if isinstance(replayed, dict) else {}


def _begin(mod: Any, ctx: Any, fmt: Format, request: Any, replaced: str | None = None) -> Any:
    try:
        body = json.loads(request.content or b"{}")
    except (ValueError, UnicodeDecodeError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    url = request.url
    req = LLMRequest(
        fmt, fmt.model(body, url.path), provider_of(fmt, url.host, url.port, url.path),
        url.host, url.path, "httpx", body, stream=fmt.is_stream(body, url.path),
    )  # fmt: skip
    fmt.prepare_stream(req)  # before the journal: a replay must hide the same chunk
    call = Call(
        kind="llm", name=req.model, args=(), kwargs={}, run=ctx, record_input=False,
        meta={"request": req, "api": fmt.api, "provider": req.provider, "body": body, "url": str(url)},
    )  # fmt: skip
    call.meta["_args_digest"] = hashlib.sha256(request.content or b"").hexdigest()
    if replaced is not None:
        call.event["fallback_from"] = replaced
    return _begun(mod, ctx, call, request, req, functools.partial(start_call, call))


def _begun(mod: Any, ctx: Any, call: Call, request: Any, req: LLMRequest, start: Callable[[], Any]) -> Any:
    """:func:`_begin` from the call's start (``start``: ``start_call``, or what is left of it
    after a guard's wait). A start that must wait for a rate limit's turn on an async client's
    loop gives a ``LoopWait``, handed on with this as what follows it (``engine._attempts.on_store``):
    that wait was made on a store thread, which every async run of the process shares."""
    try:
        replayed = start()
    except Exception as exc:
        entry = ctx.journal.get(call.call_id) if call.call_id else None
        if entry is not None and entry.status == "failed":
            return call, request, _ReplayedFailure(sdk_visible(exc) if isinstance(exc, WfloError) else exc)
        if isinstance(exc, WfloError):
            raise sdk_visible(exc) from None
        raise
    if isinstance(replayed, LoopWait):
        return replayed._replace(resume=functools.partial(_begun, mod, ctx, call, request, req, replayed.resume))
    if replayed is not NOT_REPLAYED:
        recorded = exact_body(ctx, call, replayed)
        if req.hide_usage and "text/event-stream" in (recorded.get("headers") or {}).get("content-type", ""):
            recorded = {**recorded, "body": _without_usage(recorded.get("body") or "")}
        return call, request, _response(mod, recorded, request)
    if req.changed:
        request = _with_body(mod, request, req.body)
    return call, request, NOT_REPLAYED


def _usage_only(event: bytes) -> bool:
    """An SSE event that carries only usage (the chunk wflo asked for and the caller did not)."""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                doc = json.loads(line[5:])
            except ValueError:
                return False
            return isinstance(doc, dict) and doc.get("choices") == [] and bool(doc.get("usage"))
    return False


def _without_usage(body: str) -> str:
    events = body.encode().split(b"\n\n")
    return b"\n\n".join(e for e in events if not _usage_only(e)).decode()


# ----------------------------------------------------------------------------- model fallback
_chain: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("wflo_fallback_chain", default={})  # noqa: B039


class fallback:
    """``wflo.integrations.fallback("gpt-4o", "gpt-4o-mini")``: inside it (a ``with`` block or a decorated
    function), an LLM call to ``gpt-4o`` that fails with a retryable provider error (HTTP 408,
    409, 429 or 5xx, a timeout or a dropped connection) is sent again with ``gpt-4o-mini``, and so
    on down the list. Each attempt is its own journaled, budgeted and priced LLM call; the
    fallback's event names the model it replaced (``fallback_from``). The SDK sees only the
    last answer. Set the SDK's own retries to 0 (``max_retries=0``) to fall back at once."""

    def __init__(self, *models: str) -> None:
        if len(models) < 2 or not all(isinstance(m, str) and m for m in models) or len(set(models)) != len(models):
            raise UserError(f"wflo.integrations.fallback takes two or more different model names, got {models!r}")
        self.models = models
        self._tokens: list[contextvars.Token[dict[str, str]]] = []

    def __enter__(self) -> fallback:
        chain = dict(_chain.get())
        chain.update(zip(self.models, self.models[1:], strict=False))
        self._tokens.append(_chain.set(chain))
        return self

    def __exit__(self, *exc: object) -> None:
        _chain.reset(self._tokens.pop())

    def __call__(self, fn: Any) -> Any:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                with fallback(*self.models):
                    return await fn(*args, **kwargs)

            return awrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with fallback(*self.models):
                return fn(*args, **kwargs)

        return wrapper


def _next_model(model: str) -> str | None:
    chain = _chain.get()
    return chain.get(model) if chain else None


class _Next(NamedTuple):
    """What to send after a failed attempt."""

    request: Any
    attempt: int
    """Attempts already made at this model (0 after a switch to the fallback model)."""
    delay: float
    replaced: str | None
    """The model this attempt falls back from (recorded as ``fallback_from``)."""


def _after_failure(
    call: Call, mod: Any, request: Any, attempt: int, response: Any, error: BaseException | None, *, live: bool
) -> _Next | None:
    """After a failed attempt (an exception, or a 408/409/429/5xx answer): the model's retry
    policy (``wflo.policies.retry``) first, then ``wflo.integrations.fallback``'s next model; ``None`` when
    neither applies (the failure goes to the SDK as it is). Each attempt is its own journaled
    call, and the decision is recorded in its event (``next``), so a replay follows it exactly
    (without the wait)."""
    if not live:
        entry = call.run.journal.get(call.call_id)
        decided = entry.data.get("next") if entry is not None else None
        if not isinstance(decided, dict):
            return None
        if "fallback" in decided:
            return _Next(_swap_model(mod, request, str(decided["fallback"])), 0, 0.0, call.name)
        return _Next(request, attempt, 0.0, None)
    if error is None:
        if response is None or not retryable_status(response.status_code):
            return None
        error = _status_error(response)
    elif not isinstance(error, Exception) or not is_retryable(error):
        return None
    policy = call.run.runtime.policies.retry_for(call)
    delay = policy.next_delay(attempt, error) if policy is not None else None
    if delay is not None:
        call.event["next"] = {"retry": attempt + 1, "delay_s": round(delay, 3)}
        return _Next(request, attempt, delay, None)
    model = _next_model(call.name)
    if model is None:
        return None
    call.event["next"] = {"fallback": model}
    return _Next(_swap_model(mod, request, model), 0, 0.0, call.name)


class _ReplayedFailure(NamedTuple):
    """What ``_begin`` returns for a call the journal says failed: its recorded error, raised
    unless the call's recorded ``next`` says what was sent after it."""

    error: BaseException


def _status_error(response: Any) -> Exception:
    err = ProviderStatusError(int(response.status_code))
    err.response = response  # type: ignore[attr-defined]  # Retry-After is read from it
    return err


def _set_timeout(call: Call, request: Any) -> None:
    """A ``wflo.policies.timeout`` for this model: every phase of the request is bounded."""
    seconds = call.run.runtime.policies.timeout_for(call)
    if seconds is not None:
        request.extensions = {
            **request.extensions,
            "timeout": dict.fromkeys(("connect", "read", "write", "pool"), seconds),
        }


def _swap_model(mod: Any, request: Any, model: str) -> Any:
    try:
        body = json.loads(request.content or b"{}")
    except (ValueError, UnicodeDecodeError):
        body = {}
    return _with_body(mod, request, {**body, "model": model})


def _with_body(mod: Any, request: Any, body: dict[str, Any]) -> Any:
    content = json.dumps(body).encode()
    headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
    return mod.Request(request.method, request.url, headers=headers, content=content, extensions=request.extensions)


def _response(mod: Any, recorded: dict[str, Any], request: Any) -> Any:
    body = recorded.get("body") or ""
    return mod.Response(
        recorded.get("status", 200), headers=recorded.get("headers", {}), content=body.encode(), request=request
    )


def _end(call: Call, response: Any, content: bytes, complete: bool, t0: float) -> None:
    headers = {k: response.headers[k] for k in _KEEP_HEADERS if k in response.headers}
    value = {"status": response.status_code, "headers": headers, "body": content.decode("utf-8", "replace")}
    if not complete:
        value["complete"] = False
    _finish(call, Outcome(value=value, duration_ms=(time.perf_counter() - t0) * 1000))


def _finish(call: Call, outcome: Outcome) -> None:
    original = outcome.error
    try:
        finish_call(call, outcome, check_cancel=False)
    except WfloError as exc:
        if exc is original:
            raise
        raise sdk_visible(exc) from None


class _Recorder:
    """Passes a response stream through to the SDK, keeping a copy; settles when it ends
    (fully read: complete; closed early or failed: as far as it went)."""

    def __init__(self, response: Any, call: Call, t0: float, hide_usage: bool = False) -> None:
        self._inner = response.stream
        self._hide = hide_usage
        self._pending = b""
        self._response = response
        self._call = call
        self._t0 = t0
        self._chunks: list[bytes] = []
        self._done = False
        self._lock = threading.Lock()
        # A stream its code stops reading without closing it (a ``break``, an error in the
        # loop) ends with the run at the latest: recorded and settled before the run's end.
        call.run.keep_open(id(self), self._end_on_run())

    def _pass(self, chunk: bytes) -> bytes:
        """What the caller sees of a chunk: with the usage event taken out if wflo asked for it."""
        if not self._hide:
            return chunk
        data = self._pending + chunk
        *events, self._pending = data.split(b"\n\n")
        return b"".join(e + b"\n\n" for e in events if not _usage_only(e))

    def _rest(self) -> bytes:
        rest, self._pending = self._pending, b""
        return b"" if _usage_only(rest) else rest

    def _finish(self, complete: bool) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._call.run.let_go(id(self))
        _end(self._call, self._response, b"".join(self._chunks), complete, self._t0)

    def _abandoned(self) -> None:
        """The run ends with this stream still open: recorded as far as it was read (its
        usage not seen: charged at its reservation). A sync stream's connection is closed."""
        self._finish(False)

    def _end_on_run(self) -> Any:
        return self._abandoned


class _RunEnd:
    """What an async stream leaves with its run: ``end()`` anywhere, ``aend()`` on its loop."""

    aend: Any = None

    def __init__(self, end: Callable[[], None]) -> None:
        self._end = end

    def __call__(self) -> None:
        self._end()


class _SyncRecorder(_Recorder):
    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                self._chunks.append(chunk)
                out = self._pass(chunk)
                if out:
                    yield out
        except Exception:
            self._finish(False)
            raise
        rest = self._rest()
        if rest:
            yield rest
        self._finish(True)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._finish(False)

    def _abandoned(self) -> None:
        try:
            self._finish(False)
        finally:
            self._inner.close()


class _AsyncRecorder(_Recorder):
    def _end_on_run(self) -> Any:
        end = _RunEnd(self._abandoned)
        end.aend = self._aabandoned
        return end

    async def _aabandoned(self) -> None:
        """The run ends with this stream open, on the stream's loop: its connection is closed,
        then it is recorded as far as it was read (on the store's threads)."""
        try:
            await self._inner.aclose()
        finally:
            await self._afinish(False)

    async def _afinish(self, complete: bool) -> None:
        """``_finish`` on the store's threads (it records the call): the loop runs on."""
        if not self._done:
            run = self._call.run
            await run.store.off_loop(self._finish, complete, key=run.run_id)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                self._chunks.append(chunk)
                out = self._pass(chunk)
                if out:
                    yield out
        except Exception:
            await self._afinish(False)
            raise
        rest = self._rest()
        if rest:
            yield rest
        await self._afinish(True)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._afinish(False)
