"""``http_get``: fetch a URL for an agent without letting it reach the inside of your network.

Checked *before* each request (the first and every redirect hop):

1. the scheme is ``http`` or ``https``; the URL carries no ``user:password@``;
2. an IP literal, in any spelling the C resolver accepts (``127.0.0.1``, ``2130706433``,
   ``0x7f000001``, ``0177.0.0.1``, ``127.1``, ``[::1]``, ``[::ffff:127.0.0.1]``), must be a
   public address;
3. the host matches the allowlist (``"example.com"``, ``"*.python.org"`` for subdomains,
   ``"host:8080"`` for a port other than 80/443, ``"*"`` for any public host);
4. the host is resolved here and *every* address it resolves to must be public: not private,
   loopback, link-local (cloud metadata), multicast, reserved, unspecified, shared (CGNAT), nor
   an IPv6 form that embeds one (IPv4-mapped, 6to4, Teredo, NAT64).

The connection then goes to the checked address itself (the original name is sent as the
``Host`` header and as TLS SNI, and the certificate is verified against it), so a second DNS
answer cannot point the request elsewhere (DNS rebinding). Redirects are followed by hand,
up to ``max_redirects``, each re-checked. Environment proxies are ignored.

Checked *while* reading: the body is streamed and cut at ``max_bytes`` (the result says
``truncated``); the whole call, redirects included, is bounded by ``timeout``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Collection, Sequence
from typing import Any

import httpx

from .._errors import UserError
from ..approvals import Approval, parse_duration
from ..sandbox import parse_size
from ._errors import ToolRefused
from ._manifest import Capabilities, Effects
from ._tool import Tool

__all__ = ["address_problem", "http_get"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_REDIRECTS = (301, 302, 303, 307, 308)
_SAFE_HEADERS = (
    "content-type", "content-length", "content-language", "last-modified", "etag", "date", "cache-control",
    "expires", "age",
)  # fmt: skip
_NUMERIC_HOST = re.compile(r"^[0-9a-fx.]+$", re.I)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_problem(ip: IPAddress) -> str | None:
    """Why an agent may not connect to ``ip`` (``None``: it is a public address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip.teredo is not None:
            embedded = ip.teredo[1]
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_problem(embedded)
            return f"{inner} (embedded in {ip})" if inner else None
    checks = (
        (ip.is_loopback, "a loopback address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_link_local, "a link-local address (e.g. cloud metadata)"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "a shared (CGNAT) address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    )
    for hit, what in checks:
        if hit:
            return f"{ip} is {what}"
    return None


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        # Decimal, hex, octal and short forms that inet_aton (and so the resolver) accepts.
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


class _Allowlist:
    def __init__(self, allow: Sequence[str]) -> None:
        if isinstance(allow, str):
            allow = [allow]
        self.entries: list[tuple[str, int | None]] = []
        for raw in allow:
            if not isinstance(raw, str) or not raw.strip():
                raise UserError(f"allow= entries are host names like 'example.com' or '*.python.org', got {raw!r}")
            entry = raw.strip().lower()
            port: int | None = None
            head, sep, tail = entry.rpartition(":")
            if sep and tail.isdigit() and not head.endswith(":"):
                entry, port = head, int(tail)
            entry = entry.strip("[]").rstrip(".")
            literal = _ip_literal(entry)
            if literal is not None:
                entry = str(literal)
            elif not entry.isascii():
                entry = entry.encode("idna").decode("ascii")
            self.entries.append((entry, port))
        self.text = ", ".join(allow) or "nothing"

    def allows(self, host: str, port: int) -> bool:
        for pattern, want_port in self.entries:
            if (port not in (80, 443)) if want_port is None else (port != want_port):
                continue
            if pattern == "*" or pattern == host:
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        return False


class _Fetcher:
    def __init__(
        self,
        name: str,
        allow: _Allowlist,
        max_bytes: int,
        timeout: float,
        max_redirects: int,
        allow_addresses: Collection[tuple[str, int]],
    ) -> None:
        self.name = name
        self.allow = allow
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.allow_addresses = frozenset((str(ipaddress.ip_address(h)), int(p)) for h, p in allow_addresses)

    def refuse(self, reason: str) -> ToolRefused:
        return ToolRefused(tool=self.name, reason=reason)

    def _check_address(self, ip: IPAddress, port: int, host: str | None = None) -> None:
        if (str(ip), port) in self.allow_addresses:
            return
        problem = address_problem(ip)
        if problem is not None:
            where = f"{host} resolves to an address the agent may not reach: " if host else ""
            raise self.refuse(f"{where}{problem}")

    def target(self, url: httpx.URL) -> tuple[httpx.URL, str, str]:
        """Check ``url``; return the pinned URL (host replaced by the checked IP), Host header, SNI name."""
        if url.scheme not in ("http", "https"):
            raise self.refuse(f"only http:// and https:// URLs are allowed, got {url.scheme or 'no'} scheme")
        if url.userinfo:
            raise self.refuse("URLs with a user name or password are not allowed")
        host = url.raw_host.decode("ascii", "replace").lower().rstrip(".")
        if not host:
            raise self.refuse("the URL has no host")
        port = url.port or (443 if url.scheme == "https" else 80)
        literal = _ip_literal(host)
        if literal is not None:
            self._check_address(literal, port, None if host == str(literal) else host)
            host = str(literal)
        if not self.allow.allows(host, port):
            raise self.refuse(f"{host}:{port} is not on the allowlist ({self.allow.text})")
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            except (OSError, UnicodeError) as exc:
                raise self.refuse(f"cannot resolve {host}: {exc}") from None
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
            if not addresses:
                raise self.refuse(f"{host} resolves to no address")
        for ip in addresses:  # every answer, not only the one we use: no mixed public/private tricks
            self._check_address(ip, port, None if literal is not None else host)
        default = port == (443 if url.scheme == "https" else 80)
        host_header = (f"[{host}]" if ":" in host else host) + ("" if default else f":{port}")
        return url.copy_with(host=str(addresses[0])), host_header, host

    def fetch(self, url: str) -> dict[str, Any]:
        if not isinstance(url, str) or not url.strip():
            raise self.refuse("the url must be a non-empty string")
        try:
            current = httpx.URL(url.strip())
        except (httpx.InvalidURL, ValueError) as exc:
            raise self.refuse(f"not a valid URL: {exc}") from None
        deadline = time.monotonic() + self.timeout
        transport = httpx.HTTPTransport(retries=0)
        with httpx.Client(transport=transport, trust_env=False, follow_redirects=False) as client:
            for hop in range(self.max_redirects + 1):
                try:
                    pinned, host_header, sni = self.target(current)
                except ToolRefused as exc:
                    if hop == 0:
                        raise
                    raise self.refuse(f"the redirect to {current} was refused: {exc.reason}") from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timed_out()
                request = client.build_request(
                    "GET",
                    pinned,
                    headers={"Host": host_header, "Accept-Encoding": "identity", "User-Agent": "wflo-http-get"},
                    extensions={"sni_hostname": sni, "timeout": httpx.Timeout(remaining).as_dict()},
                )
                try:
                    response = client.send(request, stream=True)
                except httpx.TimeoutException:
                    raise self._timed_out() from None
                except httpx.HTTPError as exc:
                    raise self.refuse(f"the request to {current} failed: {exc}") from None
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        if hop == self.max_redirects:
                            raise self.refuse(f"more than {self.max_redirects} redirects")
                        try:
                            current = current.join(location)
                        except (httpx.InvalidURL, ValueError) as exc:
                            raise self.refuse(f"the redirect target is not a valid URL: {exc}") from None
                        continue
                    return self._read(current, response, deadline)
                finally:
                    response.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _timed_out(self) -> ToolRefused:
        return self.refuse(f"the request took longer than {self.timeout:g}s and was stopped")

    def _read(self, url: httpx.URL, response: httpx.Response, deadline: float) -> dict[str, Any]:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise self.refuse(f"the response is content-encoded ({encoding}); only uncompressed bodies are read")
        body = bytearray()
        truncated = False
        try:
            for chunk in response.iter_raw(65536):
                body += chunk
                if len(body) > self.max_bytes:
                    del body[self.max_bytes :]
                    truncated = True
                    break
                if time.monotonic() > deadline:
                    raise self._timed_out()
        except httpx.TimeoutException:
            raise self._timed_out() from None
        except httpx.HTTPError as exc:
            raise self.refuse(f"reading the response from {url} failed: {exc}") from None
        charset = response.charset_encoding or "utf-8"
        try:
            text = bytes(body).decode(charset, errors="replace")
        except LookupError:
            text = bytes(body).decode("utf-8", errors="replace")
        headers = {k: response.headers[k] for k in _SAFE_HEADERS if k in response.headers}
        return {"url": str(url), "status": response.status_code, "headers": headers, "text": text,
                "truncated": truncated}  # fmt: skip


def http_get(
    *,
    allow: Sequence[str],
    max_bytes: int | str = "1MiB",
    timeout: float | str = "10s",
    max_redirects: int = 3,
    name: str = "http_get",
    description: str | None = None,
    approval: Approval | None = None,
    risk: str = "medium",
    _allow_addresses: Collection[tuple[str, int]] = (),
) -> Tool[[str], dict[str, Any]]:
    """A tool that GETs a URL on an allowed public host and returns ``{url, status, headers, text, truncated}``.

    Args:
        allow: hosts the agent may fetch from: ``"example.com"``, ``"*.python.org"`` (any
            subdomain), ``"host:8080"`` (ports other than 80 and 443 must be named), ``"*"``
            (any public host). Private and internal addresses are refused whatever this says.
        max_bytes: the body is cut there (``"1MiB"``); the result says ``truncated: true``.
        timeout: the whole call, redirects included (``"10s"``).
        max_redirects: redirects followed, each one checked like the first URL.
        name: the tool's name (journal, manifest, OpenAI schema).
        description: what the model is told (default: names the allowed hosts and limits).
        approval: an optional ``wflo.Approval`` for the calls.
        risk: the manifest's risk level (``"medium"``).
        _allow_addresses: for wflo's own tests only: ``(ip, port)`` pairs exempt from the
            address policy (a local test server). Never set this in production.

    The tool raises ``ToolRefused`` for a URL it may not fetch and when the time limit is hit.
    """
    allowlist = _Allowlist(allow)
    if isinstance(max_redirects, bool) or not isinstance(max_redirects, int) or max_redirects < 0:
        raise UserError(f"max_redirects must be an integer >= 0, got {max_redirects!r}")
    fetcher = _Fetcher(
        name, allowlist, parse_size(max_bytes, "max_bytes"), parse_duration(timeout, "timeout"), max_redirects,
        _allow_addresses,
    )  # fmt: skip

    def fetch_url(url: str) -> dict[str, Any]:
        return fetcher.fetch(url)

    fetch_url.__name__ = name
    text = description or (
        f"Fetch a web page with HTTP GET (hosts allowed: {allowlist.text}) and get "
        f'{{"url", "status", "headers", "text", "truncated"}} back; the body is cut at {fetcher.max_bytes} bytes.'
    )
    effects = Effects(read_only=True, idempotent=True, open_world=True)
    caps = Capabilities(network=tuple(str(a) for a in allow))
    return Tool(fetch_url, name=name, description=text, risk=risk, approval=approval, effects=effects,
                capabilities=caps)  # fmt: skip
