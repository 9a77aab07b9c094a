"""A packaged tool runs in the sandbox with exactly its manifest's capabilities: each reach past
them is refused, and the refusal is on the run's record."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from toolpkg import make_package

import wflo
from wflo.engine import current_run
from wflo.tools import ToolRefused, grant, load

CODE = """
import os, socket, urllib.request

def read_path(path):
    with open(path) as fh:
        return fh.read()

def write_path(path, text):
    with open(path, "w") as fh:
        fh.write(text)
    return "ok"

def fetch(url):
    return urllib.request.urlopen(url, timeout=5).status

def connect(host, port):
    socket.create_connection((host, port), timeout=3)
    return "connected"

def env(name):
    return os.environ.get(name)

def secret(name):
    from wflo_tool import secret as get
    return get(name)

def spin():
    while True:
        pass

def hog():
    return len(bytearray(1 << 30))

def shout():
    print("x" * 5_000_000)
    return "done"

def run_true():
    import subprocess
    return subprocess.run(["/usr/bin/true"]).returncode

def upper(text):
    return {"text": text.upper(), "home": os.environ.get("HOME"), "path": os.environ.get("WFLO_DATABASE_URL")}
"""


def _tool(name: str, props: dict[str, Any], **caps: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0", "description": f"probe {name}",
            "input_schema": {"type": "object", "properties": {k: {"type": v} for k, v in props.items()},
                             "required": list(props), "additionalProperties": False},
            "effects": {"read_only": True}, "capabilities": caps}  # fmt: skip


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    # Not under pytest's tmp_path: its parents are private to this user, and the sandbox runs
    # as a uid of its own when wflo runs as root (as site-packages would be, this is world-readable).
    tmp_path = Path(tempfile.mkdtemp(prefix="wflo-toolpkg-"))
    tmp_path.chmod(0o755)
    try:
        yield _probes(tmp_path, monkeypatch)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "data.txt").write_text("granted data")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # writable by the sandbox's uid
    fs = {"read": [str(allowed)], "write": [str(out)]}
    limits = {"wall": "3s", "cpu_seconds": 2, "memory": "256MiB", "output": "64KiB"}
    tools = [
        _tool("read_path", {"path": "string"}, filesystem=fs),
        _tool("write_path", {"path": "string", "text": "string"}, filesystem=fs),
        _tool("fetch", {"url": "string"}, network=["api.example.com:443"]),
        _tool("connect", {"host": "string", "port": "integer"}, network=["api.example.com:443"]),
        _tool("env", {"name": "string"}, secrets=["PROBE_TOKEN"]),
        _tool("secret", {"name": "string"}, secrets=["PROBE_TOKEN"]),
        _tool("spin", {}, limits=limits),
        _tool("hog", {}, limits=limits),
        _tool("shout", {}, limits=limits),
        _tool("run_true", {}),
        _tool("upper", {"text": "string"}),
    ]
    site = tmp_path / "site"
    make_package(site, "probe_tools", CODE, tools)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PROBE_TOKEN", "tok-123")
    monkeypatch.setenv("OTHER_SECRET", "never-seen")
    return {"allowed": allowed, "outside": outside, "out": out}


def _refused(tool: str, **kwargs: Any) -> ToolRefused:
    with pytest.raises(ToolRefused) as info:
        load(tool)(**kwargs)
    return info.value


def test_a_tool_gets_its_declared_paths_and_nothing_else(probes: dict[str, Path]) -> None:
    assert load("read_path")(path=str(probes["allowed"] / "data.txt")) == "granted data"
    refused = _refused("read_path", path=str(probes["outside"] / "secret.txt"))
    assert "filesystem" in refused.reason and "outside" in refused.reason
    for path in ("/etc/passwd", os.path.expanduser("~/.bashrc"), "/proc/1/environ"):
        assert "filesystem" in _refused("read_path", path=path).reason
    assert load("write_path")(path=str(probes["out"] / "o.txt"), text="hi") == "ok"
    assert (probes["out"] / "o.txt").read_text() == "hi"
    assert "filesystem" in _refused("write_path", path=str(probes["allowed"] / "data.txt"), text="x").reason
    assert (probes["allowed"] / "data.txt").read_text() == "granted data"


def test_network_only_to_the_allow_list(probes: dict[str, Path]) -> None:
    assert "network evil.example.net:443" in _refused("fetch", url="https://evil.example.net/x").reason
    assert "network" in _refused("connect", host="169.254.169.254", port=80).reason
    assert "network" in _refused("connect", host="127.0.0.1", port=5432).reason


def test_only_declared_secrets_are_injected(probes: dict[str, Path]) -> None:
    assert load("env")(name="PROBE_TOKEN") == "tok-123"
    assert load("env")(name="OTHER_SECRET") is None  # the host's environment never reaches a tool
    assert load("secret")(name="PROBE_TOKEN") == "tok-123"
    assert "secret OTHER_SECRET" in _refused("secret", name="OTHER_SECRET").reason


def test_limits_stop_the_tool(probes: dict[str, Path]) -> None:
    assert "limit" in _refused("spin").reason
    assert "limit" in _refused("shout").reason
    hog = _refused("hog")
    assert "limit" in hog.reason or "MemoryError" in hog.reason


def test_subprocess_refused_unless_declared(probes: dict[str, Path]) -> None:
    assert "subprocess" in _refused("run_true").reason


def test_arguments_are_checked_against_the_schema(probes: dict[str, Path]) -> None:
    assert "required" in _refused("upper").reason
    assert "text" in _refused("upper", text=3).reason
    assert load("upper")(text="hi") == {"text": "HI", "home": "/work", "path": None}


@wflo.workflow(name="prober")
def prober(path: str) -> dict[str, Any]:
    try:
        return {"ok": load("read_path")(path=path)}
    except ToolRefused as refused:
        assert current_run() is not None
        return {"refused": refused.reason}


def test_in_a_run_the_refusal_is_journaled(configured: str, probes: dict[str, Path]) -> None:
    secret = str(probes["outside"] / "secret.txt")
    out = prober.run(secret)
    assert "not granted" in out["refused"]  # a packaged tool needs a grant first
    grant("read_path", "workflow:prober")
    handle = prober.start(secret)
    from wflo.engine import Worker

    Worker(concurrency=1, workflows=None).run(max_runs=1, idle_timeout=1.0)
    assert "filesystem" in handle.result(timeout=5)["refused"]
    failed = [e.data for e in handle.events() if e.type == "call.failed"]
    assert failed[0]["refusals"] == [{"kind": "filesystem", "filesystem": secret}]
    assert failed[0]["grant"] == "workflow:prober" and failed[0]["sandbox"]["backend"] == "bwrap"
    assert "tok-123" not in str([e.data for e in handle.events()])
