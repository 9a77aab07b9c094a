"""The sandbox interface: limits, results, and the backend ABC a name picks."""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import UserError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.I)
_UNITS = {None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


def parse_size(value: Any, what: str) -> int:
    """Bytes from ``1048576``, ``"256MiB"``, ``"1MB"``, ``"2GiB"``."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be a size like '256MiB', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise UserError(f"{what} must be a size like '256MiB' or '1MB', got {value!r}")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower() if match.group(2) else None])
    if size <= 0:
        raise UserError(f"{what} must be positive, got {value!r}")
    return size


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What sandboxed code may use (all enforced; exceeding one kills the code)."""

    memory: int
    """Address space in bytes."""
    cpu_seconds: int
    """CPU time."""
    wall: float
    """Wall-clock seconds; the whole process tree is killed at the deadline."""
    processes: int
    """Processes and threads."""
    output: int
    """Bytes of stdout plus stderr."""
    file_size: int
    """Largest file the code may write (bytes)."""
    open_files: int = 64


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended."""

    stdout: str
    stderr: str
    exit_code: int | None
    killed_by: str | None
    """``"timeout"``, ``"memory"``, ``"cpu"``, ``"output"``, ``"disk"`` or ``None``."""
    duration_ms: float
    files: dict[str, bytes] = field(default_factory=dict)
    """Files the code left in its scratch directory, by sandbox path (``/work/out.png``)."""
    backend: str = ""
    code_digest: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_by is None

    def to_event(self) -> dict[str, Any]:
        """What the journal records: digests and sizes, not the content."""
        return {
            "backend": self.backend, "code_sha256": self.code_digest, "exit_code": self.exit_code,
            "killed_by": self.killed_by, "ms": round(self.duration_ms, 3),
            "stdout_sha256": hashlib.sha256(self.stdout.encode()).hexdigest(), "stdout_bytes": len(self.stdout.encode()),
            "stderr_sha256": hashlib.sha256(self.stderr.encode()).hexdigest(), "stderr_bytes": len(self.stderr.encode()),
            "files": sorted(self.files),
        }  # fmt: skip


class SandboxBackend(abc.ABC):
    """A way to run untrusted code. Backends refuse (``SandboxUnavailableError``) rather than
    run with weaker isolation than they promise."""

    name: str = "abstract"

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ``SandboxUnavailableError`` (saying what to install) if this host can't run it."""

    @abc.abstractmethod
    def run(
        self, argv: Sequence[str], *, limits: Limits, files: Mapping[str, bytes], network: Any, stdin: bytes | None
    ) -> SandboxResult:
        """Run ``argv`` inside the sandbox, with ``files`` placed under ``/work``. ``network`` is
        ``None`` (no network) or an ``Egress`` allow-list; a backend that cannot hold one to its
        list refuses it."""
