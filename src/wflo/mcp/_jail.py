"""A stdio MCP server inside wflo's sandbox, with the capabilities of a manifest of its own.

``connect(command, sandbox=Capabilities(...))`` does not start ``command`` itself: the SDK's
stdio client starts ``python -m wflo.mcp._jail`` on the host, which starts a bubblewrap
sandbox (``ToolBackend``: an empty root with read-only ``/usr``, the declared paths bound,
network only through the egress proxy holding the declared allow-list or none at all, the
declared limits), hands the sandbox's launcher a small boot program that sets the server's
environment (its ``env`` and its declared secrets, sent on stdin, never on a command line)
and ``exec``s the command, then relays the MCP stream (stdin, stdout, stderr) both ways
until either side ends. bwrap dies with this process (``--die-with-parent``), so a client
that goes away takes the server with it.

Limits hold for the server's whole life: memory (address space), CPU seconds, processes
(8, or 32 with ``subprocess``). ``wall`` bounds each call (the connection's timeout).
``output`` bounds each message the server sends (a line of its stdout: a longer one stops the
server, since the client would hold it all in memory to parse it) and its stderr as a whole
(what follows is read and dropped, with one line saying so).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from typing import Any

ENV = "WFLO_MCP_JAIL"

BOOT = r"""
import json, os
line = b""
while not line.endswith(b"\n"):
    c = os.read(0, 1)
    if not c:
        raise SystemExit(0)
    line += c
req = json.loads(line)
os.environ.update(req["env"])
try:
    os.execvp(req["argv"][0], req["argv"])
except OSError as e:
    os.write(2, f"sandbox: cannot run {req['argv'][0]!r}: {e.strerror}\n".encode())
    os._exit(127)
"""


def config(argv: list[str], caps: Any, env: dict[str, str], secrets: dict[str, str]) -> str:
    """What the host side of the jail needs (passed in its environment, never on a command line)."""
    lim = caps.limits
    return json.dumps({
        "argv": argv, "read": list(caps.read), "write": list(caps.write), "network": list(caps.network),
        "processes": 32 if caps.subprocess else 8, "memory": lim.memory, "cpu_seconds": lim.cpu_seconds,
        "output": lim.output, "env": {**env, **secrets},
    })  # fmt: skip


def _write_all(dst: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view) :]


def _pump(src: int, dst: int, done: Any = None) -> None:
    try:
        while data := os.read(src, 65536):
            _write_all(dst, data)
    except OSError:
        pass
    finally:
        if done is not None:
            with contextlib.suppress(OSError):
                done()


def _pump_messages(src: int, dst: int, limit: int) -> bool:
    """The server's stdout to the client as it comes; False (and the rest not sent) as soon
    as one line passes ``limit`` bytes."""
    run = 0  # bytes of the line not ended yet
    try:
        while data := os.read(src, 65536):
            parts = data.split(b"\n")
            run += len(parts[0])
            if max(run, 0, *map(len, parts[1:])) > limit:
                return False
            if len(parts) > 1:
                run = len(parts[-1])
            _write_all(dst, data)
    except OSError:
        pass
    return True


def _pump_capped(src: int, dst: int, limit: int) -> None:
    """Up to ``limit`` bytes of ``src`` to ``dst``, then a line saying the rest was dropped;
    ``src`` is read to its end either way (a server blocked on a full pipe would hang)."""
    sent = 0
    try:
        while data := os.read(src, 65536):
            if sent < limit:
                part = data[: limit - sent]
                _write_all(dst, part)
                sent += len(part)
                if sent >= limit:
                    _write_all(dst, f"\nsandbox: the MCP server's stderr cut at {limit} bytes\n".encode())
    except OSError:
        pass


def main() -> int:
    from ..sandbox import Egress, Limits
    from ..sandbox._launcher import header
    from ..tools._runner import ToolBackend

    cfg = json.loads(os.environ.pop(ENV))
    backend = ToolBackend(None, "", tuple(cfg["read"]), tuple(cfg["write"]))
    backend.check()
    limits = Limits(memory=cfg["memory"], cpu_seconds=cfg["cpu_seconds"], wall=86400.0,
                    processes=cfg["processes"], output=cfg["output"], file_size=16 << 20)  # fmt: skip
    egress = Egress.parse(cfg["network"]) if cfg["network"] else None
    started = backend.start(limits=limits, files={}, egress=egress)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        proc = started.proc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        if not started.wait_ready(30):
            proc.kill()
            proc.wait()
            sys.stderr.write(proc.stderr.read()[-4000:].decode("utf-8", "replace"))  # bwrap's reason
            return 1
        boot = json.dumps({"argv": cfg["argv"], "env": cfg["env"]}).encode() + b"\n"
        proc.stdin.write(header([], BOOT) + boot)
        proc.stdin.flush()
        threading.Thread(target=_pump, args=(0, proc.stdin.fileno(), proc.stdin.close), daemon=True).start()
        threading.Thread(target=_pump_capped, args=(proc.stderr.fileno(), 2, cfg["output"]), daemon=True).start()
        if _pump_messages(proc.stdout.fileno(), 1, cfg["output"]):
            return 0
        proc.kill()
        sys.stderr.write(
            f"sandbox: the MCP server sent a message longer than its output limit ({cfg['output']} bytes); stopped\n"
        )
        sys.stderr.flush()
        return 1
    finally:
        started.close()


if __name__ == "__main__":
    sys.exit(main())
