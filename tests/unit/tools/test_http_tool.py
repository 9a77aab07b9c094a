"""http_get: SSRF refused in every spelling, redirects re-checked, size and time capped.

No internet is needed: two local servers stand in for the web; the first is exempted from the
address policy through the test-only ``_allow_addresses`` hook, the second is not.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from wflo.tools import ToolRefused, http_get
from wflo.tools._http import address_problem


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts.path == "/slow":
            time.sleep(1.5)
        body = b"x" * 10_000 if parts.path == "/big" else f"host={self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "session=secret")
        self.end_headers()
        with contextlib.suppress(OSError):  # the client may hang up first (size and time caps)
            self.wfile.write(body)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[int, int]]:
    started = []
    for _ in range(2):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(server)
    yield started[0].server_address[1], started[1].server_address[1]
    for server in started:
        server.shutdown()
        server.server_close()


def _tool(ports: tuple[int, int], **options: object) -> object:
    first, second = ports
    return http_get(
        allow=[f"127.0.0.1:{first}", f"127.0.0.1:{second}", "localhost", "*"],
        _allow_addresses=[("127.0.0.1", first)],
        **options,  # type: ignore[arg-type]
    )


SSRF = [
    "http://127.0.0.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[2002:7f00:1::]/",
    "http://[64:ff9b::a00:1]/",
    "http://localhost/",
    "http://LOCALHOST./",
]


@pytest.mark.parametrize("url", SSRF)
def test_internal_addresses_are_refused_in_every_spelling(url: str) -> None:
    tool = http_get(allow=["*", "localhost"])
    with pytest.raises(ToolRefused) as info:
        tool(url)
    assert info.value.tool == "http_get"


def test_a_hostname_that_resolves_to_loopback_is_refused_by_resolution() -> None:
    """``localhost`` is on the allowlist; it is still refused because of what it resolves to."""
    with pytest.raises(ToolRefused, match=r"localhost resolves to .*127\.0\.0\.1 is a loopback address"):
        http_get(allow=["localhost"])("http://localhost/")


def test_address_policy() -> None:
    import ipaddress

    assert address_problem(ipaddress.ip_address("93.184.216.34")) is None
    assert address_problem(ipaddress.ip_address("2606:4700::1111")) is None
    for bad in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "100.100.0.1", "::1", "::ffff:10.0.0.1", "ff02::1"):
        assert address_problem(ipaddress.ip_address(bad)) is not None, bad


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/", "only http"),
        ("file:///etc/passwd", "only http"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http://evil.example.org/", "not on the allowlist"),
        ("http://example.com:8080/", "not on the allowlist"),
        ("http://python.org.evil.com/", "not on the allowlist"),
        ("not a url", "only http"),
    ],
)
def test_scheme_credentials_and_allowlist(url: str, reason: str) -> None:
    with pytest.raises(ToolRefused, match=reason):
        http_get(allow=["example.com", "*.python.org"])(url)


def test_allowlist_matching() -> None:
    from wflo.tools._http import _Allowlist

    allow = _Allowlist(["example.com", "*.python.org", "api.test:8443"])
    assert allow.allows("example.com", 443) and allow.allows("example.com", 80)
    assert not allow.allows("example.com", 8080) and not allow.allows("www.example.com", 443)
    assert allow.allows("docs.python.org", 443) and not allow.allows("python.org", 443)
    assert not allow.allows("evilpython.org", 443)
    assert allow.allows("api.test", 8443) and not allow.allows("api.test", 443)


def test_fetch_pins_the_checked_address_and_keeps_the_host(servers: tuple[int, int]) -> None:
    first, _ = servers
    out = _tool(servers)(f"http://127.0.0.1:{first}/hello")  # type: ignore[operator]
    assert out["status"] == 200 and out["text"] == f"host=127.0.0.1:{first}" and out["truncated"] is False
    assert "set-cookie" not in out["headers"] and out["headers"]["content-type"].startswith("text/plain")


def test_the_hook_exempts_only_the_named_port(servers: tuple[int, int]) -> None:
    _, second = servers
    with pytest.raises(ToolRefused, match="loopback"):
        _tool(servers)(f"http://127.0.0.1:{second}/hello")  # type: ignore[operator]


def test_redirect_to_an_internal_address_is_refused(servers: tuple[int, int]) -> None:
    first, second = servers
    for target in (
        f"http://127.0.0.1:{second}/hello",
        "http://169.254.169.254/",
        "http://[::1]/",
        "http://2130706433/",
    ):
        with pytest.raises(ToolRefused, match=r"redirect to .* was refused"):
            _tool(servers)(f"http://127.0.0.1:{first}/redirect?to={target}")  # type: ignore[operator]


def test_redirect_off_the_allowlist_is_refused(servers: tuple[int, int]) -> None:
    first, _ = servers
    tool = http_get(allow=[f"127.0.0.1:{first}"], _allow_addresses=[("127.0.0.1", first)])
    with pytest.raises(ToolRefused, match="not on the allowlist"):
        tool(f"http://127.0.0.1:{first}/redirect?to=http://elsewhere.test/")


def test_allowed_redirects_are_followed_and_capped(servers: tuple[int, int]) -> None:
    first, _ = servers
    tool = _tool(servers, max_redirects=1)
    out = tool(f"http://127.0.0.1:{first}/redirect?to=/hello")  # type: ignore[operator]
    assert out["status"] == 200 and out["url"].endswith("/hello")
    two = "/redirect?to=/redirect%3Fto%3D/hello"
    with pytest.raises(ToolRefused, match="more than 1 redirects"):
        tool(f"http://127.0.0.1:{first}{two}")  # type: ignore[operator]


def test_body_is_cut_at_max_bytes(servers: tuple[int, int]) -> None:
    first, _ = servers
    out = _tool(servers, max_bytes=1000)(f"http://127.0.0.1:{first}/big")  # type: ignore[operator]
    assert out["truncated"] is True and len(out["text"]) == 1000


def test_timeout_is_enforced(servers: tuple[int, int]) -> None:
    first, _ = servers
    started = time.monotonic()
    with pytest.raises(ToolRefused, match=r"longer than 0\.3s"):
        _tool(servers, timeout="300ms")(f"http://127.0.0.1:{first}/slow")  # type: ignore[operator]
    assert time.monotonic() - started < 1.2


def test_manifest() -> None:
    m = http_get(allow=["example.com"]).manifest()
    assert m["name"] == "http_get" and m["risk"] == "medium" and m["parameters"]["required"] == ["url"]
    assert "example.com" in m["description"]
