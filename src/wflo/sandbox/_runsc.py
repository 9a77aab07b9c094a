"""The ``runsc`` backend: gVisor, a user-space kernel between the code and the host.

Each execution is an OCI bundle made on the fly: a read-only root holding only ``/usr`` (and
its ``/bin``, ``/lib`` links), a fresh ``/proc``, a small tmpfs ``/tmp`` and the scratch
directory ``/work``; the program runs as ``nobody`` with no environment but ``PATH``/``HOME``,
no network (``--network=none``), no new privileges and the rlimits of its ``Limits``. Where
wflo can make cgroups, all of gVisor runs in a memory group of ``memory`` plus gVisor's own
overhead, so memory the code holds outside its processes' address space (SysV shared memory,
memfds) is counted too. The
sandboxed code talks to gVisor's Sentry, not to the host kernel, so a kernel bug reachable
from a system call is not a host escape. Costs about 250 ms a start (bwrap: ~30 ms).

Debian's package: ``apt-get install runsc``. wflo runs it as root (its normal mode: the Sentry
then drops into its own namespaces and seccomp filter). An egress allow-list is refused: this
backend has no network.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._errors import SandboxUnavailableError, UserError
from . import _cgroup
from ._base import Limits, SandboxBackend, SandboxResult
from ._bwrap import SANDBOX_GID, SANDBOX_UID, fill_scratch
from ._supervise import Started

RUNSC_OVERHEAD = 64 << 20
"""Memory gVisor itself needs beside the code's (its kernel and gofer: about 20 MiB measured)."""
RUNSC_TASKS = 4096
"""The memory group's task cap: gVisor's own Go threads count in it; the code's processes are
bounded by ``RLIMIT_NPROC`` inside gVisor."""


class RunscBackend(SandboxBackend):
    name = "runsc"

    def __init__(self) -> None:
        self._checked = False
        self._state = Path(tempfile.gettempdir()) / "wflo-runsc-state"

    def check(self) -> None:
        if self._checked:
            return
        if shutil.which("runsc") is None:
            raise SandboxUnavailableError(backend="runsc", detail="gVisor's runsc is not installed",
                                          hint="Install it: apt-get install runsc")  # fmt: skip
        if os.getuid() != 0:
            raise SandboxUnavailableError(backend="runsc", detail="runsc needs to be started as root here",
                                          hint="Use backend='bwrap' when wflo does not run as root.")  # fmt: skip
        self._checked = True

    def run(
        self, argv: Sequence[str], *, limits: Limits, files: Mapping[str, bytes], network: object, stdin: bytes | None
    ) -> SandboxResult:
        self.check()
        if network:
            raise UserError("the runsc backend has no network; use backend='bwrap' for an egress allow-list")
        bundle = Path(tempfile.mkdtemp(prefix="wflo-runsc-"))
        scratch = bundle / "work"
        try:
            rootfs = bundle / "rootfs"
            for d in ("usr", "work", "tmp", "proc", "dev"):
                (rootfs / d).mkdir(parents=True)
            for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")):
                (rootfs / link).symlink_to(target)
            scratch.mkdir()
            fill_scratch(scratch, files)  # runsc runs as root here (check()), so this chowns too
            (bundle / "config.json").write_text(json.dumps(_config(list(argv), limits, scratch)))
        except BaseException:
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        cid = f"wflo-{uuid.uuid4().hex[:16]}"
        base = ["runsc", "--network=none", "--ignore-cgroups", "--root", str(self._state)]
        # The whole of gVisor (its kernel, the gofer, the code's memory in the kernel's memory
        # file) in one memory group: RLIMIT_AS bounds each process, not shared memory (SysV
        # segments, memfds, tmpfs files) that the user-space kernel keeps on the code's behalf.
        group = _cgroup.CGroup.create(limits.memory + RUNSC_OVERHEAD, RUNSC_TASKS)
        try:
            proc = subprocess.Popen(
                [*base, "run", "--bundle", str(bundle), cid],
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, close_fds=True, env={"PATH": "/usr/bin:/bin"},
                preexec_fn=group.join if group is not None else None,
            )  # fmt: skip
        except BaseException:
            if group is not None:
                group.close()
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        started = Started(self.name, proc, scratch, limits, group)
        started.cleanup = lambda: _delete(base, cid, bundle)
        return started.finish(stdin)


def _delete(base: list[str], cid: str, bundle: Path) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([*base, "delete", "--force", cid], capture_output=True, timeout=10)
    shutil.rmtree(bundle, ignore_errors=True)


def _config(argv: list[str], limits: Limits, scratch: Path) -> dict[str, object]:
    def rl(kind: str, value: int) -> dict[str, object]:
        return {"type": kind, "hard": value, "soft": value}

    return {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_GID},
            "args": argv,
            "env": ["PATH=/usr/bin:/bin", "HOME=/work", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"],
            "cwd": "/work",
            "noNewPrivileges": True,
            "rlimits": [
                rl("RLIMIT_AS", limits.memory),
                rl("RLIMIT_CPU", limits.cpu_seconds),
                rl("RLIMIT_FSIZE", limits.file_size),
                rl("RLIMIT_NOFILE", limits.open_files),
                rl("RLIMIT_NPROC", limits.processes),
                rl("RLIMIT_CORE", 0),
            ],
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "sandbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": [f"size={limits.file_size}"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["size=64k"]},
            {"destination": "/work", "type": "bind", "source": str(scratch), "options": ["rbind", "rw"]},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }
