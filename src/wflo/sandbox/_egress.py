"""Network for a sandbox: an allow-list of ``host:port`` reached through a host-side proxy.

A sandbox never shares the host's network namespace (where the store's ``127.0.0.1:5432``,
other local services and the cloud metadata address ``169.254.169.254`` are reachable). With an
allow-list it gets its own, empty namespace (only its own loopback) and a Unix socket bound in
from the host; a forwarder inside (``_launcher``) listens on ``127.0.0.1:3128`` and carries each
connection to ``EgressProxy`` on the host, which speaks HTTP proxy (``CONNECT host:port`` and
absolute-form ``GET http://host/…``) and:

- refuses a destination not on the allow-list (exact ``host:port``, or ``*.example.com:443``);
- resolves the name itself and refuses every address that is not public: loopback, private,
  link-local (cloud metadata), shared (100.64/10), multicast, reserved, unspecified, IPv6
  unique-local, IPv4 embedded in IPv6 (mapped, 6to4, Teredo, NAT64) when the embedded address
  is one of those, and known metadata endpoints that are public addresses (Azure's 168.63.129.16);
- connects to the address it checked (no second lookup a rebinding DNS server could answer
  differently).

``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` are set inside, so ``urllib``, ``requests``,
``httpx`` and ``curl`` use it; a plain ``socket.connect`` to the world has no route.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import selectors
import socket
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .._errors import UserError

METADATA = {ipaddress.ip_address("168.63.129.16"), ipaddress.ip_address("fd00:ec2::254")}
MAX_HEADER = 16 * 1024
MAX_CONNECTIONS = 32


@dataclass(frozen=True)
class Egress:
    """Where a sandbox may connect: ``Egress(allow=["api.example.com:443"])``.

    ``wflo.Sandbox(network=["api.example.com:443"])`` is the short form.
    """

    allow: tuple[str, ...]
    """``host:port`` entries; a host may start with ``*.`` to allow its subdomains."""
    unsafe_allow_private: bool = False
    """Test-only escape hatch: let allowed entries resolve to loopback or private addresses
    (a local test server). Never set it in production: it reopens ``127.0.0.1`` services."""

    @classmethod
    def parse(cls, network: object) -> Egress | None:
        if network is None or network is False:
            return None
        if isinstance(network, Egress):
            entries = network.allow
        elif network is True:
            raise UserError(
                "network=True would share the host's network (its loopback services and the cloud metadata "
                "address); pass an allow-list instead: network=['api.example.com:443']"
            )
        elif isinstance(network, str) or not isinstance(network, Sequence):
            raise UserError(f"network must be a list of 'host:port' entries, got {network!r}")
        else:
            entries = tuple(network)
        if not entries:
            return None
        clean = tuple(_entry(e) for e in entries)
        return cls(allow=clean, unsafe_allow_private=isinstance(network, Egress) and network.unsafe_allow_private)

    def allows(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.allow:
            ehost, eport = entry.rsplit(":", 1)
            if int(eport) != port:
                continue
            if ehost == host or (ehost.startswith("*.") and host.endswith(ehost[1:])):
                return True
        return False


def _entry(value: object) -> str:
    if not isinstance(value, str):
        raise UserError(f"network entries are 'host:port' strings, got {value!r}")
    host, sep, port = value.strip().lower().rpartition(":")
    host = host.strip("[]").rstrip(".")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise UserError(f"network entries are 'host:port' (like 'api.example.com:443'), got {value!r}")
    return f"{host}:{int(port)}"


def refusal(address: str) -> str | None:
    """Why the proxy will not connect to ``address`` (an IP), or ``None`` if it is public."""
    # The one address check wflo has (``http_get`` uses it too); imported here because the
    # tools package imports the sandbox.
    from ..tools._http import address_problem

    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address} is not an IP address"
    if ip in METADATA or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped in METADATA):
        return f"{address} is a cloud metadata address"
    return address_problem(ip)


class EgressProxy:
    """The host side: an HTTP proxy on a Unix socket, one per allow-list, for this process."""

    def __init__(self, egress: Egress, gid: int | None) -> None:
        self.egress = egress
        self._dir = Path(tempfile.mkdtemp(prefix="wflo-egress-"))
        self.path = self._dir / "egress.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        if gid is not None:  # wflo as root: each sandbox has a uid of its own, all share this group
            os.chown(self.path, 0, gid)
            os.chmod(self.path, 0o660)
            os.chmod(self._dir, 0o711)
        self._sock.listen(64)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._closed = False
        threading.Thread(target=self._accept, name="wflo-egress", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.1 503 wflo egress: too many connections\r\n\r\n")
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk or len(head) > MAX_HEADER:
                    return
                head += chunk
            upstream, rest = self._open(head)
            if isinstance(upstream, str):
                conn.sendall(f"HTTP/1.1 403 wflo egress: {upstream}\r\nContent-Length: 0\r\n\r\n".encode())
                return
            with upstream:
                if rest is None:  # CONNECT: what the client sent after its request goes on through
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    rest = head.split(b"\r\n\r\n", 1)[1]
                if rest:
                    upstream.sendall(rest)
                _pump(conn, upstream)
        except OSError:
            pass
        finally:
            conn.close()
            self._slots.release()

    def _open(self, head: bytes) -> tuple[socket.socket | str, bytes | None]:
        """The checked upstream connection (or why not) and, for a plain HTTP request, the bytes
        to send it first (the request rewritten to origin form)."""
        line, _, after = head.partition(b"\r\n")
        try:
            method, target, version = line.decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            return "malformed request", None
        if method == "CONNECT":
            host, _, port_s = target.rpartition(":")
            rest = None
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                return "only CONNECT and absolute http:// requests are proxied", None
            try:
                host, port_s = url.hostname, str(url.port or 80)
            except ValueError:
                return "malformed destination", None
            path = url.path or "/"
            rest = f"{method} {path}{'?' + url.query if url.query else ''} {version}\r\n".encode() + after
        host = host.strip("[]")
        if not port_s.isdigit() or not host:
            return "malformed destination", None
        port = int(port_s)
        if not self.egress.allows(host, port):
            return f"{host}:{port} is not on the allow-list", None
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return f"cannot resolve {host}: {exc.strerror or exc}", None
        why = ""
        for family, kind, proto, _, addr in infos:
            reason = None if self.egress.unsafe_allow_private else refusal(str(addr[0]))
            if reason is not None:
                why = reason
                continue
            sock = socket.socket(family, kind, proto)
            sock.settimeout(10)
            try:
                sock.connect(addr)
            except OSError as exc:
                sock.close()
                why = f"{addr[0]}:{port}: {exc.strerror or exc}"
                continue
            sock.settimeout(None)
            return sock, rest
        return why or f"no address for {host}", None

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
            self._dir.rmdir()


def _pump(a: socket.socket, b: socket.socket) -> None:
    a.settimeout(None)
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    open_sides = 2
    try:
        while open_sides:
            for key, _ in sel.select():
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                data = src.recv(65536)
                if data:
                    key.data.sendall(data)
                    continue
                sel.unregister(src)
                open_sides -= 1
                with contextlib.suppress(OSError):
                    key.data.shutdown(socket.SHUT_WR)
    finally:
        sel.close()


_proxies: dict[Egress, EgressProxy] = {}
_lock = threading.Lock()


def proxy_for(egress: Egress, gid: int | None) -> EgressProxy:
    """The process's proxy for this allow-list (started on first use, stopped at exit)."""
    with _lock:
        if egress not in _proxies:
            _proxies[egress] = EgressProxy(egress, gid)
            if len(_proxies) == 1:
                atexit.register(_close_all)
        return _proxies[egress]


def _close_all() -> None:
    for proxy in _proxies.values():
        proxy.close()
