"""The closed world of a guarded run: every request to an LLM provider is understood or refused.

wflo understands LLM requests it can price and bound (see ``wflo.cost._formats``) sent
through ``httpx`` (the openai, anthropic and LiteLLM clients, raw httpx; ``_http``),
``requests``, ``urllib3``, ``urllib.request``, ``http.client``'s ``request()`` and ``aiohttp``
(``_requests``, ``_plain``, ``_aiohttp``, all through ``_whole``) and Bedrock's ``Converse``
through botocore. Everything else that reaches an LLM provider from inside a guarded run (an
endpoint wflo cannot price, another botocore operation, a request written piece by piece with
``http.client``) is refused here *before it is sent*, with an error that names the client,
host and path and says how to allow it.

"An LLM provider" is a request to a known provider host (:data:`KNOWN_HOSTS`), to a base URL
the user registered (``wflo.egress.register``: a local vLLM or Ollama server), or a ``POST``
to a path of a known LLM API on any host. Reads (``GET``/``HEAD``) and free endpoints (token
counting, model lists) bill nothing and pass. A host opted out (``wflo.egress.allow`` or
``WFLO_EGRESS_ALLOW``) passes unguarded, and each such request is recorded on the run.

The checks sit at the lowest layer each client family shares, before any connection is
opened: ``http.client.HTTPConnection.request``/``putrequest`` (``urllib.request`` and anything
built on ``http.client``), ``urllib3``'s ``HTTPConnectionPool.urlopen`` (``requests``, botocore)
and ``aiohttp.ClientSession._request``. None is installed by ``import wflo``: the first guarded
run (or ``wflo.init()``) installs them. wflo's own understood paths mark the requests they send
(a context variable), so the gate lets exactly those through.
"""

from __future__ import annotations

import contextvars
import http.client
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from .._errors import EgressRefusedError, UserError
from ..cost._formats import detect

KNOWN_HOSTS: dict[str, str] = {
    "api.openai.com": "openai",
    "openai.azure.com": "azure",
    "cognitiveservices.azure.com": "azure",
    "services.ai.azure.com": "azure",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "google",
    "aiplatform.googleapis.com": "google",  # and regional: us-central1-aiplatform…
    "bedrock-runtime": "aws",
    "api.mistral.ai": "mistral",
    "api.groq.com": "groq",
    "api.together.xyz": "together",
    "api.together.ai": "together",
    "api.fireworks.ai": "fireworks",
    "openrouter.ai": "openrouter",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "x-ai",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
}
"""Host (or host suffix; ``bedrock-runtime`` matches any region's endpoint) → provider id."""

_FREE_SUFFIXES = ("/count_tokens", ":countTokens", "/input_tokens", "/models", "/tokenize")

_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("wflo_understood_send", default=False)
_lock = threading.Lock()
_registered: dict[str, str] = {}
_allowed: dict[str, str] = {}
_installed: set[str] = set()

current_run: Callable[[], Any] | None = None
"""Set by ``_http``: the run a request belongs to (``None`` outside any guarded run)."""


def _host_of(netloc_or_host: str) -> str:
    return netloc_or_host.rsplit("@", 1)[-1].split(":", 1)[0].strip("[]").lower()


def _norm_base(url: str) -> tuple[str, str]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = (parts.hostname or "").lower()
    port = parts.port
    return (f"{host}:{port}" if port else host), parts.path.rstrip("/")


class Egress:
    """``wflo.egress``: which hosts are LLM providers, and which are opted out of enforcement."""

    def register(self, base_url: str, *, provider: str = "openai") -> None:
        """Treat ``base_url`` (``http://localhost:8000/v1``) as an LLM provider: inside a guarded
        run, requests under it are understood (priced with ``provider``'s price book) or refused."""
        if not isinstance(base_url, str) or not base_url:
            raise UserError(f"wflo.egress.register takes a base URL, got {base_url!r}")
        with _lock:
            _registered[base_url] = provider

    def allow(self, host: str, *, reason: str = "") -> None:
        """Opt ``host`` out of enforcement: its requests pass unguarded and unpriced, and each
        one is recorded on its run as an ``egress.opted_out`` event (with ``reason``)."""
        if not isinstance(host, str) or not host:
            raise UserError(f"wflo.egress.allow takes a host name, got {host!r}")
        with _lock:
            _allowed[_host_of(host)] = reason or "opted out with wflo.egress.allow"

    def clear(self) -> None:
        """Forget registered base URLs and opt-outs made in code (tests)."""
        with _lock:
            _registered.clear()
            _allowed.clear()

    def provider_for(self, host: str, port: int | None, path: str) -> str | None:
        """The provider id of a request to ``host:port/path``, or ``None`` when it is no LLM provider."""
        host = _host_of(host)
        with _lock:
            registered = list(_registered.items())
        for base, provider in registered:
            netloc, prefix = _norm_base(base)
            if netloc in (host, f"{host}:{port}") and path.startswith(prefix):
                return provider
        for known, provider in KNOWN_HOSTS.items():
            if (
                host == known
                or host.endswith(("." + known, "-" + known))
                or (known == "bedrock-runtime" and known in host)
            ):
                return provider
        return None

    def opted_out(self, host: str) -> str | None:
        host = _host_of(host)
        with _lock:
            reason = _allowed.get(host)
        if reason is not None:
            return reason
        from .._config import settings

        if host in {_host_of(h.strip()) for h in settings().egress_allow}:
            return "opted out with the egress_allow setting (WFLO_EGRESS_ALLOW)"
        return None


egress = Egress()


@contextmanager
def understood() -> Iterator[None]:
    """Marks a request wflo's guarded path is sending (the gate lets it through)."""
    token = _inside.set(True)
    try:
        yield
    finally:
        _inside.reset(token)


def check(client: str, method: str, host: str, port: int | None, path: str) -> None:
    """The gate: inside a guarded run, refuse a request to an LLM provider that wflo's
    understood paths are not sending. Records opted-out requests on the run."""
    if _inside.get() or current_run is None:
        return
    ctx = current_run()
    if ctx is None:
        return
    method = method.upper()
    path = path.split("?", 1)[0]
    fmt = detect(method, path)
    provider = egress.provider_for(host, port, path)
    if fmt is None and provider is None:
        return
    if fmt is None and (method in ("GET", "HEAD", "OPTIONS") or path.endswith(_FREE_SUFFIXES)):
        return  # reads and token counting bill nothing
    reason = egress.opted_out(host)
    if reason is not None:
        _record_opt_out(ctx, client, method, host, path, reason)
        return
    if fmt is None:
        why = "wflo cannot price this endpoint"
    else:
        why = (
            f"{client} is not a client wflo can guard ({fmt.api} requests are guarded through httpx, requests, "
            "urllib3, urllib.request and http.client's request())"
        )
    raise EgressRefusedError(client=client, method=method, host=_host_of(host), path=path, reason=why)


def _record_opt_out(ctx: Any, client: str, method: str, host: str, path: str, reason: str) -> None:
    from ..store import NewEvent

    # Recorded before the request goes out: an opt-out that cannot be recorded is not taken.
    ctx.append([NewEvent("egress.opted_out", {
        "client": client, "method": method, "host": _host_of(host), "path": path, "reason": reason,
    })])  # fmt: skip


_LIBS = (("botocore", "botocore"), ("aiohttp", "aiohttp"), ("requests", "requests"), ("urllib3", "urllib3"),
         ("urllib.request", "urllib.request"), ("httpx", "httpx"))  # fmt: skip


def client_name(default: str) -> str:
    """The outermost HTTP library on the stack (``requests`` over ``urllib3`` over ``http.client``)."""
    found = default
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        for prefix, name in _LIBS:
            if module == prefix or module.startswith(prefix + "."):
                found = name
        frame = frame.f_back  # type: ignore[assignment]
    return found


# ----------------------------------------------------------------------------- hooks
def install() -> None:
    """Put the gate into ``http.client`` now, and into aiohttp and botocore when they are
    imported (now or later). Idempotent."""
    with _lock:
        if "http.client" not in _installed:
            _wrap_http_client()
            _installed.add("http.client")
    # Called at every run's start: what is wrapped, or waits for its import with the hook in
    # place, is passed over without the lock (issue 20).
    for name, wrap in _HOOKS:
        if name in _installed:
            continue
        if name in sys.modules:
            _once(name, wrap, sys.modules[name])
        elif _finder.pending.get(name) is not wrap or _finder not in sys.meta_path:
            on_import(name, wrap)


def _once(name: str, wrap: Callable[[Any], None], module: Any) -> None:
    with _lock:
        if name in _installed:
            return
        _installed.add(name)
    wrap(module)


def _wrap_http_client() -> None:
    from . import _plain

    conn = http.client.HTTPConnection
    original = conn.putrequest
    original_request = conn.request
    original_getresponse = conn.getresponse

    def putrequest(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if not _inside.get() and current_run is not None:
            host, port, path = _plain.target(self, url)
            check(client_name("http.client"), method, host, port, path)
        return original(self, method, url, *args, **kwargs)

    def request(self: Any, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        headers = {} if headers is None else headers
        if not _inside.get() and current_run is not None:
            fmt = detect(method.upper(), _plain.target(self, url)[2])
            ctx = current_run() if fmt is not None else None
            if fmt is not None and ctx is not None:
                self.__dict__.pop("_wflo_answer", None)
                return _plain.http_client_send(
                    ctx, fmt, client_name("http.client"), original_request, original_getresponse, self,
                    method, url, body, headers, bool(kwargs.get("encode_chunked", False)),
                )  # fmt: skip
        self.__dict__.pop("_wflo_answer", None)
        return original_request(self, method, url, body, headers, **kwargs)

    def getresponse(self: Any) -> Any:
        answer = self.__dict__.pop("_wflo_answer", None)  # the guarded request's, read whole
        return answer if answer is not None else original_getresponse(self)

    putrequest.__wflo_wrapped__ = original  # type: ignore[attr-defined]
    request.__wflo_wrapped__ = original_request  # type: ignore[attr-defined]
    getresponse.__wflo_wrapped__ = original_getresponse  # type: ignore[attr-defined]
    conn.putrequest = putrequest  # type: ignore[method-assign]
    conn.request = request  # type: ignore[method-assign]
    conn.getresponse = getresponse  # type: ignore[method-assign]


def _wrap_urllib3(urllib3: Any) -> None:
    # urllib3 opens (and TLS-handshakes) an HTTPS connection before it writes the request
    # line; checking here refuses before any connection to the provider is made.
    pool = urllib3.HTTPConnectionPool
    original = pool.urlopen

    def urlopen(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if not _inside.get() and current_run is not None:
            parts = urlsplit(url)
            host, port, path = parts.hostname or self.host, parts.port or self.port, parts.path or "/"
            fmt = detect(method.upper(), path)
            ctx = current_run() if fmt is not None else None
            if fmt is not None and ctx is not None:
                from . import _plain

                return _plain.urllib3_send(
                    ctx, fmt, client_name("urllib3"), original, self, method, url, host, port, path, args, kwargs
                )
            check(client_name("urllib3"), method, host, port, path)
            with understood():  # checked (and an opt-out recorded) once, not again by http.client
                return original(self, method, url, *args, **kwargs)
        return original(self, method, url, *args, **kwargs)

    urlopen.__wflo_wrapped__ = original  # type: ignore[attr-defined]
    pool.urlopen = urlopen


def _wrap_aiohttp(aiohttp: Any) -> None:
    session = aiohttp.ClientSession
    original = session._request

    async def _request(self: Any, method: str, str_or_url: Any, *args: Any, **kwargs: Any) -> Any:
        if not _inside.get() and current_run is not None:
            base = getattr(self, "_base_url", None)
            url = str(str_or_url)
            if base is not None and "://" not in url:
                url = str(base.join(aiohttp.client.URL(url)))
            parts = urlsplit(url)
            host, path = parts.hostname or "", parts.path or "/"
            fmt = detect(method.upper(), path)
            ctx = current_run() if fmt is not None and not args else None
            if fmt is not None and ctx is not None:
                from . import _aiohttp

                return await _aiohttp.request(
                    ctx, fmt, original, self, method, str_or_url, url, host, parts.port, path, kwargs
                )
            check("aiohttp", method, host, parts.port, path)
        return await original(self, method, str_or_url, *args, **kwargs)

    _request.__wflo_wrapped__ = original  # type: ignore[attr-defined]
    session._request = _request

    # ``_request`` follows redirects itself, each hop a new ``ClientRequest`` sent here; a 307
    # or 308 keeps the method and the body. A hop the gate above did not guard is gated too.
    request_class = aiohttp.ClientRequest
    original_send = request_class.send

    async def send(self: Any, conn: Any) -> Any:
        if not _inside.get() and current_run is not None:
            url = self.url
            redirect_check("aiohttp", self.method, url.host or "", url.port, url.path or "/")
        return await original_send(self, conn)

    send.__wflo_wrapped__ = original_send  # type: ignore[attr-defined]
    request_class.send = send


def redirect_check(client: str, method: str, host: str, port: int | None, path: str) -> None:
    """The gate for a request a client sends on its own (a redirect it follows) after the gate
    let the first one through unguarded: an LLM request there is refused (it would go out
    unpriced); a provider's unpriced endpoint too, as :func:`check` does."""
    if _inside.get() or current_run is None or current_run() is None:
        return
    fmt = detect(method.upper(), path)
    if egress.opted_out(host) is not None:
        if fmt is not None:  # recorded (any other hop was, with the request that started it)
            check(client, method, host, port, path)
        return
    if fmt is not None:
        raise EgressRefusedError(
            client=client, method=method.upper(), host=_host_of(host), path=path,
            reason="it is a redirect from a request wflo did not guard (send it to the LLM endpoint itself)",
        )  # fmt: skip
    check(client, method, host, port, path)


def _wrap_requests(adapters: Any) -> None:
    from . import _requests

    _requests.wrap(adapters)


def _wrap_botocore(client_module: Any) -> None:
    from . import _botocore

    _botocore.wrap(client_module)


_LITELLM = "litellm.litellm_core_utils.exception_mapping_utils"


def _wrap_litellm(module: Any) -> None:
    from . import litellm

    litellm.wrap(module)


# The modules ``install`` wraps, now or when they are imported, and how.
_HOOKS = (("urllib3", _wrap_urllib3), ("requests.adapters", _wrap_requests), ("aiohttp", _wrap_aiohttp),
          ("botocore.client", _wrap_botocore), (_LITELLM, _wrap_litellm))  # fmt: skip


class _Finder:
    """A ``sys.meta_path`` entry that wraps a module right after its first import."""

    def __init__(self) -> None:
        self.pending: dict[str, Callable[[Any], None]] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        wrap = self.pending.get(fullname)
        if wrap is None:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_wrap(module: Any) -> None:
            exec_module(module)
            self.pending.pop(fullname, None)
            _once(fullname, wrap, module)

        loader.exec_module = exec_and_wrap  # type: ignore[method-assign]
        return spec


_finder = _Finder()


def on_import(name: str, wrap: Callable[[Any], None]) -> None:
    """Call ``wrap(module)`` once module ``name`` is imported (it is not yet)."""
    with _lock:
        _finder.pending[name] = wrap
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
