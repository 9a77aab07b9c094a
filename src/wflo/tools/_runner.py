"""Run a packaged tool in the sandbox with exactly the capabilities of its manifest.

The host never imports a packaged tool's code. Each call starts a bubblewrap sandbox
(``wflo.sandbox``'s backend, P4) with, in addition to its usual empty root:

- the tool's package directory bound read-only at ``/opt/wflo-tool/<package>``;
- each ``filesystem.read`` path bound read-only and each ``filesystem.write`` path bound
  writable, at the same path (nothing else of the host exists inside);
- network only when the manifest lists hosts, through the egress proxy holding that list;
- its limits (CPU, memory, wall time, output; a low process cap when ``subprocess`` is false);
- an empty environment plus its declared secrets, resolved on the host from the secrets file
  or the environment and sent on stdin (never on a command line, never journaled).

Inside, ``RUNNER`` installs an audit hook (PEP 578) before the tool's module is imported. The
sandbox is the boundary; the hook makes each reach past the manifest fail with a clear
``PermissionError`` *and* reports it: an open, listing or change of a path outside the
declared ones, a connection or URL to a host outside the allow-list, a program started without
``subprocess``, a secret asked for by ``wflo_tool.secret(NAME)`` that was not declared. The host
puts those refusals, and a limit the sandbox killed the tool for, on the call's journal event.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._config import settings
from .._errors import UserError
from ..sandbox import Egress, Limits, SandboxResult
from ..sandbox._bwrap import BwrapBackend
from ._errors import ToolRefused
from ._manifest import Manifest

CODE_ROOT = "/opt/wflo-tool"
MARK = "\x1ewflo-tool-result\x1e"

RUNNER = r"""
import importlib.machinery as _mach, json, os, sys, types
_req = json.loads(sys.stdin.buffer.read().decode())
_out = sys.stdout
sys.stdout = sys.stderr
sys.dont_write_bytecode = True
_refusals = []
_READ = tuple(_req["read"])
_WRITE = tuple(_req["write"])
_NET = tuple(_req["network"])
_SUB = _req["subprocess"]
_SECRETS = dict(_req["secrets"])
_SYSTEM = ("/usr", "/opt/wflo-tool", "/work", "/dev/null", "/dev/urandom", "/dev/zero", "/proc/self")
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
os.environ.update(_SECRETS)
os.environ["TMPDIR"] = "/work"


def _under(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _refuse(kind, what, detail):
    _refusals.append({"kind": kind, kind if kind != "limit" else "what": what})
    raise PermissionError(f"wflo: {detail} (not in this tool's manifest)")


def _path(kind, raw, write):
    if isinstance(raw, int) or raw is None:
        return
    p = os.path.abspath(os.fsdecode(raw))
    if _under(p, _WRITE) or (not write and _under(p, _READ)):
        return
    if _under(p, _SYSTEM) and not (write and _under(p, ("/usr", "/opt/wflo-tool"))):
        return
    _refuse("filesystem", p, f"{'writing' if write else 'reading'} {p} is refused")


def _allowed(host, port):
    host = str(host).lower().rstrip(".")
    for entry in _NET:
        h, _, p = entry.rpartition(":")
        if int(p) != int(port):
            continue
        if h == host or (h.startswith("*.") and host.endswith(h[1:])):
            return True
    return False


def _hook(event, args):
    if event == "open":
        _path("filesystem", args[0], bool((args[2] or 0) & _WRITES) or (args[1] or "r")[:1] in "wax+")
    elif event in ("os.listdir", "os.scandir"):
        _path("filesystem", args[0], False)
    elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.utime", "os.truncate",
                   "os.symlink", "os.link", "shutil.rmtree"):
        _path("filesystem", args[0], True)
    elif event == "os.rename":
        _path("filesystem", args[0], True)
        _path("filesystem", args[1], True)
    elif event == "socket.getaddrinfo":
        host, port = args[0], args[1]
        if host not in ("127.0.0.1", "localhost") and not _allowed(host, port or 0):
            _refuse("network", f"{host}:{port}", f"connecting to {host}:{port} is refused")
    elif event == "socket.connect":
        addr = args[1]
        if isinstance(addr, tuple) and not (_NET and addr[:2] == ("127.0.0.1", 3128)):
            _refuse("network", f"{addr[0]}:{addr[1]}", f"connecting to {addr[0]}:{addr[1]} is refused")
    elif event == "urllib.Request":
        from urllib.parse import urlsplit
        u = urlsplit(args[0])
        port = u.port or (443 if u.scheme == "https" else 80)
        if not _allowed(u.hostname or "", port):
            _refuse("network", f"{u.hostname}:{port}", f"connecting to {u.hostname}:{port} is refused")
    elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                   "os.forkpty", "pty.spawn") and not _SUB:
        _refuse("subprocess", event, f"starting a program ({event}) is refused")


def secret(name):
    if name not in _SECRETS:
        _refuse("secret", name, f"secret {name} is refused")
    return _SECRETS[name]


class _SourceOnly(_mach.SourceFileLoader):
    # No bytecode is read for the tool's package: a signature covers its sources, not
    # __pycache__, where a planted .pyc whose header matches a source's mtime and size would run.
    def path_stats(self, path):
        raise OSError("bytecode is not read for a tool package")


def _tool_finder(path):
    if not _under(path, ("/opt/wflo-tool",)):
        raise ImportError(path)
    return _mach.FileFinder(path, (_mach.ExtensionFileLoader, _mach.EXTENSION_SUFFIXES),
                            (_SourceOnly, _mach.SOURCE_SUFFIXES))


sys.path_hooks.insert(0, _tool_finder)
_mod = types.ModuleType("wflo_tool")
_mod.secret = secret
sys.modules["wflo_tool"] = _mod
sys.path.insert(0, "/opt/wflo-tool")
sys.addaudithook(_hook)
try:
    _m, _, _a = _req["entry"].partition(":")
    _fn = __import__(_m, fromlist=["_"])
    for _part in _a.split("."):
        _fn = getattr(_fn, _part)
    _doc = {"ok": True, "value": _fn(**_req["args"])}
except BaseException as exc:
    _doc = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)[:2000]}}
_doc["refusals"] = _refusals
try:
    _text = json.dumps(_doc)
except (TypeError, ValueError) as exc:
    _text = json.dumps({"ok": False, "error": {"type": "TypeError", "message": f"result is not JSON: {exc}"},
                        "refusals": _refusals})
_out.write("\n" + MARK + _text + "\n")
_out.flush()
""".replace("MARK", repr(MARK))


class ToolBackend(BwrapBackend):
    """bwrap with a packaged tool's code and declared paths bound in."""

    def __init__(self, code_dir: Path | None, package: str, read: tuple[str, ...], write: tuple[str, ...]) -> None:
        super().__init__()
        self.binds = [] if code_dir is None else ["--ro-bind", str(code_dir), f"{CODE_ROOT}/{package}"]
        for path in read:
            self.binds += ["--ro-bind-try", path, path]
        for path in write:
            self.binds += ["--bind-try", path, path]

        self._probing = False
        self._lock = threading.Lock()

    def check(self) -> None:
        with self._lock:  # the host probe runs without the tool's binds
            self._probing = True
            try:
                super().check()
            finally:
                self._probing = False

    def _flags(self, scratch: Path, limits: Limits, proxy: Any, seccomp_fd: int) -> list[str]:
        binds = [] if self._probing else self.binds
        return [*super()._flags(scratch, limits, proxy, seccomp_fd), *binds]


def resolve_secrets(names: tuple[str, ...], tool: str) -> dict[str, str]:
    """The values of the declared secrets (secrets file first, then the environment)."""
    found: dict[str, str] = {}
    path = settings().tool_secrets_file
    if path and names:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise UserError(f"cannot read the tool secrets file {path}: {exc.strerror}") from None
        for line in lines:
            key, sep, value = line.strip().partition("=")
            if sep and key.strip() in names and not line.lstrip().startswith("#"):
                found[key.strip()] = value.strip()
    for name in names:
        if name not in found and name in os.environ:
            found[name] = os.environ[name]
    missing = [n for n in names if n not in found]
    if missing:
        raise ToolRefused(tool=tool, reason=f"secret(s) {', '.join(missing)} declared by {tool} are not set "
                          "(set them in the environment or the tool secrets file)")  # fmt: skip
    return found


def run_packaged(
    manifest: Manifest,
    backend: ToolBackend,
    args: Mapping[str, Any],
    *,
    egress: Egress | None,
    event: dict[str, Any],
) -> Any:
    """Run one call of a packaged tool; fills ``event`` with what the journal keeps (the
    sandbox's digests, the refusals) and returns the tool's value or raises ``ToolRefused``."""
    caps = manifest.capabilities
    request = {
        "entry": manifest.entry, "args": dict(args), "read": list(caps.read), "write": list(caps.write),
        "network": list(caps.network), "subprocess": caps.subprocess,
        "secrets": resolve_secrets(caps.secrets, manifest.name),
    }  # fmt: skip
    lim = caps.limits
    limits = Limits(memory=lim.memory, cpu_seconds=lim.cpu_seconds, wall=lim.wall, output=lim.output,
                    processes=32 if caps.subprocess else 8, file_size=16 << 20)  # fmt: skip
    backend.check()
    result: SandboxResult = backend.run_program([], RUNNER, limits=limits, files={}, egress=egress,
                                                stdin=json.dumps(request).encode())  # fmt: skip
    event["sandbox"] = result.to_event()
    doc = None
    _, sep, tail = result.stdout.rpartition(MARK)
    if sep:
        try:
            doc = json.loads(tail)
        except ValueError:
            doc = None
    refusals = list(doc["refusals"]) if doc else []
    if result.killed_by is not None:
        refusals.append({"kind": "limit", "what": result.killed_by})
    elif doc is not None and not doc["ok"] and doc["error"]["type"] == "MemoryError":
        refusals.append({"kind": "limit", "what": "memory"})
    if refusals:
        event["refusals"] = refusals
    if result.killed_by is not None:
        raise ToolRefused(tool=manifest.name, reason=f"the tool exceeded its {result.killed_by} limit and was stopped")
    if doc is None:
        tail_err = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise ToolRefused(tool=manifest.name, reason=f"the tool ended without a result: {tail_err[0][:300]}")
    if not doc["ok"]:
        err = doc["error"]
        if refusals:
            last = refusals[-1]  # the reach that ended the call
            what = last.get(last["kind"], last.get("what"))
            detail = f" ({err['message']})" if err["message"] else ""
            raise ToolRefused(tool=manifest.name, reason=f"refused by its manifest: {last['kind']} {what}{detail}")
        raise ToolRefused(tool=manifest.name, reason=f"{err['type']}: {err['message']}")
    return doc["value"]
