"""``wflo.Sandbox``: run untrusted code with limits, journaled when inside a run."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from .._errors import UserError
from ..engine import Call, current_run, guarded_call
from ..guards import parse_duration
from ._base import Limits, SandboxBackend, SandboxResult, parse_size
from ._bwrap import BwrapBackend, _work_path
from ._egress import Egress

PYTHON = "/usr/bin/python3"


_backends: dict[str, SandboxBackend] = {}
_factories: dict[str, Callable[[], SandboxBackend]] = {}


def register_backend(name: str, factory: Callable[[], SandboxBackend]) -> None:
    """Add a backend (a remote sandbox service, a container runtime): ``factory()`` returns a
    ``SandboxBackend``; ``wflo.Sandbox(backend=name)`` then uses it."""
    if not name or not callable(factory):
        raise UserError("register_backend(name, factory) takes a name and a callable returning a SandboxBackend")
    _factories[name] = factory
    _backends.pop(name, None)


def _backend(name: str) -> SandboxBackend:
    if name not in _backends:
        if name == "bwrap":
            _backends[name] = BwrapBackend()
        elif name == "runsc":
            from ._runsc import RunscBackend

            _backends[name] = RunscBackend()
        elif name in _factories:
            backend = _factories[name]()
            if not isinstance(backend, SandboxBackend):
                raise UserError(
                    f"sandbox backend {name!r}: the factory returned {type(backend).__name__}, not a SandboxBackend"
                )
            _backends[name] = backend
        else:
            known = ", ".join(["bwrap", "runsc", *sorted(_factories)])
            raise UserError(f"unknown sandbox backend {name!r}; available: {known}")
    return _backends[name]


def _path(path: Any) -> str:
    """A file's path, refused here (not at the first run) unless it is under /work/."""
    if not isinstance(path, str) or "\x00" in path:
        raise UserError(f"sandbox files go under /work/, got {path!r}")
    _work_path(path)
    return path


def _content(path: str, content: Any) -> bytes:
    """A file's content as bytes; text is UTF-8. Anything else is refused: ``bytes(5)`` would
    write five NUL bytes."""
    if isinstance(content, str):
        return content.encode()
    if isinstance(content, bytes | bytearray | memoryview):
        return bytes(content)
    raise UserError(f"sandbox file {path!r} must be given as text or bytes, got {type(content).__name__}")


class Sandbox:
    """Runs untrusted code with no host files, no network, no secrets and hard limits.

    ``wflo.Sandbox(memory="256MiB", cpu_seconds=5, wall="10s", processes=32, output="1MiB",
    files={"/work/data.csv": b"..."}, network=None)``. ``network`` is ``None`` (no network, the
    default) or an allow-list ``["api.example.com:443"]`` (or an ``Egress``) reached through a
    host-side proxy that refuses loopback, private and metadata addresses; never the host's.
    Inside a workflow each execution is a journaled call (kind ``sandbox``): a resumed run does
    not run finished code again, and the event records digests of the code and output, the
    limits, the allow-list and how it ended.
    """

    def __init__(
        self,
        *,
        memory: int | str = "256MiB",
        cpu_seconds: int = 5,
        wall: float | str = "10s",
        processes: int = 32,
        output: int | str = "1MiB",
        file_size: int | str = "16MiB",
        files: Mapping[str, bytes | str] | None = None,
        network: Sequence[str] | Egress | bool | None = None,
        backend: str = "bwrap",
        pool: int = 0,
    ) -> None:
        if not isinstance(cpu_seconds, int) or cpu_seconds < 1:
            raise UserError(f"cpu_seconds must be a positive integer, got {cpu_seconds!r}")
        if not isinstance(processes, int) or processes < 1:
            raise UserError(f"processes must be a positive integer, got {processes!r}")
        self.limits = Limits(
            memory=parse_size(memory, "memory"), cpu_seconds=cpu_seconds, wall=parse_duration(wall, "wall"), processes=processes,
            output=parse_size(output, "output"), file_size=parse_size(file_size, "file_size"),
        )  # fmt: skip
        self.files = {_path(path): _content(path, content) for path, content in (files or {}).items()}
        self.network = Egress.parse(network)
        if not isinstance(pool, int) or isinstance(pool, bool) or pool < 0:
            raise UserError(f"pool must be a number of warm sandboxes (0 for none), got {pool!r}")
        if pool and backend != "bwrap":  # before check(): the answer must not depend on what is installed
            raise UserError(f"pool= is available with the bwrap backend, not {backend!r}")
        self.backend = _backend(backend)
        self.backend.check()
        self._pool: Any = None
        if pool:
            from ._pool import BwrapPool

            assert isinstance(self.backend, BwrapBackend)
            self._pool = BwrapPool(self.backend, pool, limits=self.limits, files=self.files, egress=self.network)

    def close(self) -> None:
        """Stop the warm sandboxes (also done at exit)."""
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, argv: Sequence[str], *, stdin: bytes | str | None = None) -> SandboxResult:
        """Run a command (``["sh", "-c", "..."]``) in the sandbox."""
        if isinstance(argv, str):  # a str is a sequence of str: each character became an argument
            raise UserError(
                f"Sandbox.run takes a list of arguments, not a string (got {argv[:40]!r}): "
                'use run(["sh", "-c", ...]) for a shell command or run_python(code) for Python source'
            )
        if not argv or not all(isinstance(a, str) for a in argv):
            raise UserError("argv must be a non-empty list of strings")
        data = stdin.encode() if isinstance(stdin, str) else stdin
        return self._journaled(list(argv), data, None)

    def run_python(self, code: str, *, stdin: bytes | str | None = None) -> SandboxResult:
        """Run Python source (the host's ``/usr/bin/python3``, standard library only)."""
        if not isinstance(code, str):
            raise UserError("code must be a string of Python source")
        data = stdin.encode() if isinstance(stdin, str) else stdin
        return self._journaled([PYTHON, "-I", "-c", code], data, code)

    def _journaled(self, argv: list[str], stdin: bytes | None, python: str | None) -> SandboxResult:
        digest = hashlib.sha256("\0".join(argv).encode() + (stdin or b"")).hexdigest()
        ctx = current_run()
        if ctx is None:
            return self._execute(argv, stdin, digest, python)
        call = Call(kind="sandbox", name=self.backend.name, args=(), kwargs={}, run=ctx, record_input=False,
                    meta={"_args_digest": digest})  # fmt: skip
        call.event["limits"] = asdict(self.limits)
        if self.network is not None:  # what the code could reach is part of the record
            call.event["network"] = list(self.network.allow)

        def execute() -> dict[str, Any]:
            result = self._execute(argv, stdin, digest, python)
            call.event["sandbox"] = result.to_event()
            return _as_data(result)

        return _from_data(guarded_call(call, execute), self.backend.name, digest)

    def _execute(self, argv: list[str], stdin: bytes | None, digest: str, python: str | None) -> SandboxResult:
        if self._pool is not None:
            result = self._pool.run(argv if python is None else [], python, stdin)
        elif isinstance(self.backend, BwrapBackend):
            result = self.backend.run_program(argv if python is None else [], python, limits=self.limits,
                                              files=self.files, egress=self.network, stdin=stdin)  # fmt: skip
        else:
            result = self.backend.run(argv, limits=self.limits, files=self.files, network=self.network, stdin=stdin)
        return SandboxResult(**{**result.__dict__, "code_digest": digest})


def _as_data(r: SandboxResult) -> dict[str, Any]:
    return {"stdout": r.stdout, "stderr": r.stderr, "exit_code": r.exit_code, "killed_by": r.killed_by,
            "duration_ms": r.duration_ms, "files": {k: v.decode("latin-1") for k, v in r.files.items()}}  # fmt: skip


def _from_data(d: dict[str, Any], backend: str, digest: str) -> SandboxResult:
    files = {k: v.encode("latin-1") for k, v in (d.get("files") or {}).items()}
    return SandboxResult(stdout=d["stdout"], stderr=d["stderr"], exit_code=d["exit_code"], killed_by=d["killed_by"],
                         duration_ms=d["duration_ms"], files=files, backend=backend, code_digest=digest)  # fmt: skip
