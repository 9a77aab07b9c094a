"""Sandbox network modes (issue 14, finding 5): none by default; an allow-list reached through
the host's egress proxy, which refuses loopback, private, link-local and metadata addresses
after resolving; never the host's network namespace."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator

import pytest
from test_escapes import SUBSET, _check
from test_escapes import box as box  # the corpus's fixture: host secrets and environment set

from wflo import UserError
from wflo.sandbox import Egress, Sandbox
from wflo.sandbox._egress import refusal

# Inside the sandbox: ask the proxy for a tunnel and report its answer (or the error).
CONNECT = """
import os, socket
s = socket.create_connection(('127.0.0.1', 3128), timeout=10)
s.sendall(b'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n')
print(s.recv(4096).split(b'\\r\\n')[0].decode())
"""

# Inside the sandbox: is anything on the host's 127.0.0.1:5432 visible? (/proc/net/tcp lists
# the sockets of the network namespace the process is in.)
SEES_HOST_PG = "print(any(line.split()[1].endswith(':1538') for line in open('/proc/net/tcp').readlines()[1:]))"


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """A local HTTP server on the host's loopback (stands in for an allowed API)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from the test server {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_no_network_by_default() -> None:
    result = Sandbox().run_python(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 5432), 2)\nexcept OSError as e:\n    print(type(e).__name__)"
    )
    assert result.stdout == "PermissionError\n" or result.stdout.startswith("OSError"), result  # AF_INET refused


def test_network_true_is_refused_not_the_hosts_namespace() -> None:
    with pytest.raises(UserError, match="would share the host's network"):
        Sandbox(network=True)
    for bad in ("example.com:443", ["example.com"], ["example.com:http"], ["example.com:0"], [443]):
        with pytest.raises(UserError, match="network"):
            Sandbox(network=bad)  # type: ignore[arg-type]


def test_allow_list_sandbox_has_its_own_namespace() -> None:
    """With an allow-list, the sandbox still has a network namespace of its own: the host's
    PostgreSQL on 127.0.0.1:5432 is neither listed nor reachable, nor is the outside world
    except through the proxy."""
    box = Sandbox(network=["127.0.0.1:5432", "localhost:5432", "example.com:443"], wall="15s")
    result = box.run_python(
        SEES_HOST_PG + "\nimport socket\n"
        "for addr in [('127.0.0.1', 5432), ('1.1.1.1', 53), ('169.254.169.254', 80)]:\n"
        "    try:\n        socket.create_connection(addr, 2); print('ESCAPED', addr)\n"
        "    except OSError as e:\n        print(e.errno)\n"
    )
    assert "ESCAPED" not in result.stdout, result
    lines = result.stdout.split()
    assert lines[0] == "False", "the sandbox sees the host's sockets"
    assert len(lines) == 4 and all(code.isdigit() for code in lines[1:]), result


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("127.0.0.1:5432", "127.0.0.1 is a loopback address"),
        ("localhost:5432", "is a loopback address"),  # refused after resolving the name
        ("[::ffff:127.0.0.1]:5432", "loopback"),
        ("169.254.169.254:80", "169.254.169.254 is a link-local address"),
        ("10.0.0.1:80", "10.0.0.1 is a private address"),
        ("2130706433:5432", "127.0.0.1 is a loopback address"),  # a decimal spelling of 127.0.0.1
        ("example.org:443", "example.org:443 is not on the allow-list"),
    ],
)
def test_proxy_refuses_what_it_must_even_when_listed(target: str, why: str) -> None:
    allow = ["127.0.0.1:5432", "localhost:5432", "[::ffff:127.0.0.1]:5432", "169.254.169.254:80", "10.0.0.1:80",
             "2130706433:5432"]  # fmt: skip
    result = Sandbox(network=allow, wall="15s").run_python(CONNECT.format(target=target))
    assert result.stdout.startswith("HTTP/1.1 403 wflo egress:") and why in result.stdout, result


def test_allowed_local_server_through_the_test_escape_hatch(server: int) -> None:
    """A positive test needs a reachable allowed server. The proxy refuses loopback, so this
    test opts in to the documented test-only hatch (``unsafe_allow_private``); the refusals
    above run without it. Even with it, an unlisted port (the store's) is refused."""
    egress = Egress(allow=(f"127.0.0.1:{server}",), unsafe_allow_private=True)
    box = Sandbox(network=egress, wall="15s")
    result = box.run_python(
        "import http.client, os, urllib.request\n"
        f"print(urllib.request.urlopen('http://127.0.0.1:{server}/plain', timeout=10).read().decode())\n"
        "c = http.client.HTTPConnection('127.0.0.1', 3128, timeout=10)\n"
        f"c.set_tunnel('127.0.0.1', {server})\n"
        "c.request('GET', '/tunnel')\n"
        "print(c.getresponse().read().decode())\n"
        "print(os.environ['HTTPS_PROXY'])\n" + CONNECT.format(target="127.0.0.1:5432")
    )
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == [
        "hello from the test server /plain",
        "hello from the test server /tunnel",
        "http://127.0.0.1:3128",
        "HTTP/1.1 403 wflo egress: 127.0.0.1:5432 is not on the allow-list",
    ]


def test_proxy_edge_requests(server: int) -> None:
    """Bytes sent right behind a CONNECT (as TLS clients may) go through; a malformed request
    gets a 403, not a dead proxy thread."""
    egress = Egress(allow=(f"127.0.0.1:{server}",), unsafe_allow_private=True)
    result = Sandbox(network=egress, wall="15s").run_python(
        "import socket\n"
        "s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n"
        f"s.sendall(b'CONNECT 127.0.0.1:{server} HTTP/1.1\\r\\n\\r\\nGET /pipelined HTTP/1.0\\r\\n\\r\\n')\n"
        "data = b''\n"
        "while chunk := s.recv(4096):\n    data += chunk\n"
        "print(data.split(b'\\r\\n')[0].decode(), data.rsplit(b'\\r\\n', 1)[-1].decode())\n"
        "for bad in (b'GET http://127.0.0.1:x/ HTTP/1.1', b'GET ftp://a/ HTTP/1.1', b'NONSENSE'):\n"
        "    s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n"
        "    s.sendall(bad + b'\\r\\n\\r\\n')\n"
        "    print(s.recv(4096).split(b'\\r\\n')[0].decode())\n"
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "HTTP/1.1 200 Connection established hello from the test server /pipelined", result
    assert [line.split(":", 1)[0] for line in lines[1:]] == ["HTTP/1.1 403 wflo egress"] * 3, result


def test_allow_list_in_a_warm_sandbox(server: int) -> None:
    egress = Egress(allow=(f"127.0.0.1:{server}",), unsafe_allow_private=True)
    with Sandbox(network=egress, pool=1, wall="15s") as box:
        result = box.run_python(
            f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{server}/warm', timeout=10).read().decode())"
        )
    assert result.stdout == "hello from the test server /warm\n", result


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.100.100.200", "shared"),  # Alibaba's metadata, in 100.64/10
        ("169.254.169.254", "link-local"),
        ("168.63.129.16", "metadata"),  # Azure's, a public address
        ("fd00:ec2::254", "metadata"),
        ("fe80::1", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "240.0.0.1 is"),
    ],
)
def test_address_refusals(address: str, refused: str | None) -> None:
    why = refusal(address)
    assert (why is None) if refused is None else (why is not None and refused in why), why


def test_proxy_socket_is_not_the_host_network() -> None:
    """A program that skips the forwarder and talks to the proxy's socket directly meets the
    same policy."""
    result = Sandbox(network=["localhost:5432"], wall="15s").run_python(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/run/wflo/egress.sock')\n"
        "s.sendall(b'GET http://localhost:5432/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\nprint(s.recv(4096).split(b'\\r\\n')[0].decode())"
    )
    assert result.stdout.startswith("HTTP/1.1 403") and "loopback" in result.stdout, result


def test_the_proxy_itself_is_unreachable_from_the_host_network() -> None:
    """The proxy listens on a Unix socket only: this process opens no TCP listener for it."""
    before = _own_tcp_listeners()  # the test server's, when it runs
    box = Sandbox(network=["example.org:443"])
    assert box.run_python("print(1)").ok
    assert _own_tcp_listeners() == before


def _own_tcp_listeners() -> set[str]:
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                mine.add(link[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in mine:
                    found.add(cols[1])
    return found


@pytest.fixture(scope="module")
def online_box(box: Sandbox) -> Sandbox:  # box: the corpus's host secrets and environment are set
    return Sandbox(memory="256MiB", cpu_seconds=2, wall="4s", processes=32, output="64KiB", file_size="4MiB",
                   network=["example.com:443", "localhost:5432"])  # fmt: skip


@pytest.mark.parametrize(("name", "code", "expected"), SUBSET, ids=[c[0] for c in SUBSET])
def test_escape_corpus_with_an_allow_list(online_box: Sandbox, name: str, code: str, expected: str) -> None:
    """An allow-list opens the proxy and nothing else: the corpus's cross-section still holds."""
    _check(online_box, name, code, expected)


def test_journaled_with_its_allow_list(store_url: str) -> None:
    import uuid

    import wflo
    from wflo import _config

    _config.configure(database=store_url)
    box = Sandbox(network=["example.com:443"])

    @wflo.workflow(name="sbx-net")
    def flow() -> str:
        return box.run_python("print('x')").stdout

    run_id = f"sbx-net-{uuid.uuid4().hex[:8]}"
    assert flow.options(id=run_id).run() == "x\n"
    done = [e.data for e in _config.get_store().events(run_id) if e.type == "call.completed"]
    assert done[0]["network"] == ["example.com:443"]


def test_socket_family_still_limited_with_an_allow_list() -> None:
    result = Sandbox(network=["example.com:443"]).run_python(
        "import socket\ntry:\n    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n    print('ESCAPED')\nexcept OSError as e:\n    print(e.errno)"
    )
    assert "ESCAPED" not in result.stdout and result.ok, result
    assert socket.AF_PACKET  # the family exists on this host
