"""The ``bwrap`` backend: Linux namespaces through Debian's bubblewrap, started unprivileged.

Isolation: new user, pid, network, mount, ipc, uts and cgroup namespaces (``--unshare-all``
plus ``--unshare-user``), no nested user namespaces (``--disable-userns``), a new session
(no terminal injection), death with its parent, an empty environment, a root file system that
holds only read-only ``/usr`` (and its ``/bin``, ``/lib`` links), a fresh ``/proc`` and
``/dev``, size-capped tmpfs ``/tmp`` and ``/dev/shm`` and the scratch directory ``/work``; the
root and ``/dev`` themselves are read-only. No host ``/etc``,
home, project files or sockets exist inside. The network namespace is always the sandbox's
own: empty (no route anywhere, loopback only), or with an egress allow-list, a Unix socket to
the host's egress proxy (``_egress.py``). Never the host's.

**Never as root.** bwrap started by root maps the sandbox to host uid 0 (a known escape: the
code could write ``/proc/sys/kernel/core_pattern``). When wflo runs as root, the supervisor
switches to an unprivileged uid of the sandbox's own before starting bwrap: one from wflo's
reserved range (``SandboxUid``, like systemd's ``DynamicUser``), held for the sandbox's life,
with group ``nogroup`` (65534); the scratch directory is handed to that uid. No account, file
or other process on the host has that uid, not even another sandbox.

Limits: rlimits on address space, CPU time, file size and open files, set before bwrap; the
process limit is set by the launcher (``_launcher.py``) *inside* the sandbox's user namespace,
where the kernel counts only the sandbox's own processes; where root can make cgroups, a pids
and memory group per execution holds too (``_cgroup.py``). A wall-clock deadline, an output
cap and a scratch-disk cap are enforced by the supervisor (``_supervise.py``).

A seccomp filter (``_seccomp.py``) refuses the system calls that reach past those namespaces
(ptrace, mounts, new namespaces, keyrings, BPF, io_uring, perf, ``TIOCSTI``, non-``AF_UNIX``
sockets, and ``AF_INET`` too unless the sandbox has an allow-list).

A sandbox that cannot start (bwrap failed: no namespaces left, a full process table) is tried
again a few times with a growing pause, then ``SandboxUnavailableError`` names bwrap's reason;
a program's own failure is never confused with it (the launcher's ready byte tells them apart).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import resource
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._errors import SandboxUnavailableError, UserError
from . import _cgroup, _egress, _launcher, _seccomp
from ._base import Limits, SandboxBackend, SandboxResult
from ._supervise import Started, janitor, remove_tree

log = logging.getLogger("wflo.sandbox")

PYTHON = "/usr/bin/python3"
SANDBOX_UID = 65534  # the runsc backend's (gVisor maps it inside its own kernel)
SANDBOX_GID = 65534
UID_BASE = 0x7FF00000
"""wflo's reserved uids: ``UID_BASE`` to ``UID_BASE + UID_COUNT - 1`` (2146435072 to 2146500607), in
the range systemd leaves unused (1879048192 to 2147483647)."""
UID_COUNT = 65536
ATTEMPTS = 6
SEAL = ("--remount-ro", "/dev", "--remount-ro", "/")
"""The last mount operations, after every other (a subclass's binds too): the root and ``/dev``
are bwrap's own tmpfs mounts, unbounded and writable until then, so code could hold host memory
in files there far past its ``memory`` limit where no memory cgroup counts it (an ordinary user).
Only the mounts on them (``/work``, the size-capped ``/tmp`` and ``/dev/shm``, granted paths)
stay writable; bwrap remounts just the one mount, not those under it."""
# bwrap's words for a shortage that passes (EAGAIN from clone, fork or namespace creation).
TRANSIENT = ("Resource temporarily unavailable", "Can't fork", "No space left on device", "Cannot allocate memory")


def _work_path(path: str) -> str:
    """A granted path must stay inside /work."""
    norm = os.path.normpath(path)
    if not norm.startswith("/work/") or ".." in Path(norm).parts:
        raise UserError(f"sandbox files go under /work/, got {path!r}")
    return norm


def fill_scratch(scratch: Path, files: Mapping[str, bytes], uid: int = SANDBOX_UID) -> None:
    """Put the granted ``files`` in the scratch directory and, when wflo runs as root, hand
    it all to the sandbox's uid (links are not followed)."""
    for path, content in files.items():
        target = scratch / _work_path(path)[len("/work/") :]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    if os.getuid() == 0:
        for p in [scratch, *scratch.rglob("*")]:
            os.chown(p, uid, SANDBOX_GID, follow_symlinks=False)


class SandboxUid:
    """A host uid for one sandbox (wflo as root), from wflo's reserved range.

    Held through an abstract Unix socket named after it: binding the name fails while another
    process on this host (in this network namespace) holds it, and the kernel frees it when the
    holder exits, even by SIGKILL, so a crashed supervisor leaks nothing. Released after the
    sandbox's processes are gone."""

    def __init__(self, uid: int, lock: socket.socket | None) -> None:
        self.uid, self._lock = uid, lock

    @classmethod
    def allocate(cls) -> SandboxUid:
        if os.getuid() != 0:
            return cls(os.getuid(), None)  # an ordinary user cannot switch: the sandbox is theirs
        for _ in range(64):
            held = cls.take(UID_BASE + secrets.randbelow(UID_COUNT))
            if held is not None:
                return held
        raise SandboxUnavailableError(backend="bwrap", detail="no free uid in wflo's reserved range",
                                      hint="More than 65,536 sandboxes at once on one host?")  # fmt: skip

    @classmethod
    def take(cls, uid: int) -> SandboxUid | None:
        """Hold ``uid`` if nobody on this host does; ``None`` if someone does."""
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0wflo-sandbox-uid-{uid}")
        except OSError:
            lock.close()
            return None
        return cls(uid, lock)

    @property
    def held(self) -> bool:
        """Whether this is one of wflo's reserved uids, held (as root), not the user's own."""
        return self._lock is not None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@functools.cache
def namespaced_nproc() -> bool:
    """Whether RLIMIT_NPROC set inside a user namespace counts only that namespace's
    processes (per-namespace ucounts, Linux 5.14 and later)."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 14)


def process_limit_kind() -> str:
    """Which process limit holds for a sandbox started by this process on this host."""
    kinds = []
    if _cgroup.CGroup.available():
        kinds.append(f"pids cgroup (v{_cgroup.version()})")
    if namespaced_nproc():
        kinds.append("RLIMIT_NPROC in the sandbox's user namespace")
    return " + ".join(kinds) or "none (kernel before 5.14 and no cgroup)"


class BwrapBackend(SandboxBackend):
    name = "bwrap"

    def __init__(self) -> None:
        self._checked = False

    def check(self) -> None:
        if self._checked:
            return
        exe = shutil.which("bwrap")
        if exe is None:
            raise SandboxUnavailableError(
                backend="bwrap", detail="bubblewrap is not installed", hint="Install it: apt-get install bubblewrap"
            )
        seccomp_fd = _seccomp.program_fd(False)
        limits = Limits(memory=256 << 20, cpu_seconds=5, wall=5, processes=8, output=1024, file_size=1024)
        try:
            probe = subprocess.run(
                [exe, *self._flags(Path("/tmp"), limits, None, seccomp_fd), *SEAL, "/usr/bin/true"],
                capture_output=True, text=True, timeout=20, preexec_fn=self._drop_privileges, start_new_session=True,
                pass_fds=(seccomp_fd,),
            )  # fmt: skip
        finally:
            os.close(seccomp_fd)
        if probe.returncode != 0 and not any(t in probe.stderr for t in TRANSIENT):
            raise SandboxUnavailableError(
                backend="bwrap",
                detail=f"user namespaces are not usable here ({probe.stderr.strip()[:200]})",
                hint="Allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1).",
            )
        self._checked = True
        janitor.put(sweep_leftovers)  # once per process, off the caller's path

    @staticmethod
    def _drop_privileges(uid: int = SANDBOX_UID) -> None:
        if os.getuid() == 0:
            os.setgroups([])
            os.setgid(SANDBOX_GID)
            os.setuid(uid)

    def _flags(self, scratch: Path, limits: Limits, proxy: _egress.EgressProxy | None, seccomp_fd: int) -> list[str]:
        flags = [
            "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", "--clearenv",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc", "--dev", "/dev", "--size", str(limits.file_size), "--tmpfs", "/dev/shm",
            "--size", str(limits.file_size), "--tmpfs", "/tmp",
            "--bind", str(scratch), "/work", "--chdir", "/work",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--seccomp", str(seccomp_fd),
        ]  # fmt: skip
        if proxy is not None:
            # Still its own network namespace (--unshare-all): only the proxy's socket leads out.
            flags += ["--ro-bind", str(proxy.path), _launcher.SOCKET]
            url = f"http://127.0.0.1:{_launcher.FORWARD_PORT}"
            for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
                flags += ["--setenv", var, url]
        return flags

    def run(
        self,
        argv: Sequence[str],
        *,
        limits: Limits,
        files: Mapping[str, bytes],
        network: _egress.Egress | None,
        stdin: bytes | None,
    ) -> SandboxResult:
        self.check()
        return self.run_program(list(argv), None, limits=limits, files=files, egress=network, stdin=stdin)

    def run_program(
        self,
        argv: list[str],
        python: str | None,
        *,
        limits: Limits,
        files: Mapping[str, bytes],
        egress: _egress.Egress | None,
        stdin: bytes | None,
    ) -> SandboxResult:
        """Start a sandbox and run one program in it (a command, or Python source when
        ``python`` is set), starting it again if bwrap itself could not start."""
        payload = _launcher.header(argv, python) + (stdin or b"")
        for attempt in range(ATTEMPTS):
            try:
                started = self.start(limits=limits, files=files, egress=egress)
            except OSError as exc:  # fork itself failed: no process left for bwrap
                if exc.errno not in (errno.EAGAIN, errno.ENOMEM):
                    raise
                result = SandboxResult(stdout="", stderr=f"cannot start bwrap: {exc.strerror}", exit_code=None,
                                       killed_by="unavailable", duration_ms=0.0, backend=self.name)  # fmt: skip
            else:
                result = started.finish(payload)
            if result.killed_by != "unavailable":
                return result
            if attempt + 1 < ATTEMPTS and any(t in result.stderr for t in TRANSIENT):
                time.sleep(0.02 * 2**attempt * (0.5 + random.random()))
                continue
            raise unavailable(result.stderr, attempt + 1)
        raise AssertionError("unreachable")

    def start(self, *, limits: Limits, files: Mapping[str, bytes], egress: _egress.Egress | None) -> Started:
        """Start a sandbox running the launcher; it waits for its program's header on stdin."""
        owner = SandboxUid.allocate()
        # As root, the scratch directory and the cgroup are named after the uid, which is held
        # until both are removed: what a killed supervisor leaves is found by it (sweep_leftovers).
        tag = f"{owner.uid}-{_netns()}-" if owner.held else ""
        try:
            scratch = Path(tempfile.mkdtemp(prefix=f"wflo-sbx-{tag}"))
        except BaseException:
            owner.release()
            raise
        group: _cgroup.CGroup | None = None
        status_r = status_w = -1
        try:
            fill_scratch(scratch, files, owner.uid)
            os.chmod(scratch, 0o700)
            proxy = _egress.proxy_for(egress, SANDBOX_GID if os.getuid() == 0 else None) if egress else None
            group = _cgroup.CGroup.create(limits.memory, limits.processes, tag=tag)
            # Counted inside the sandbox's namespace: its bwrap init, the forwarder, the code.
            nproc = limits.processes + 2 if namespaced_nproc() or group is None else 0

            def child_setup() -> None:
                # The order is the point. Limits first, while still privileged: hard limits set
                # here can later be lowered by the sandbox's uid, never raised. Then the cgroup,
                # whose cgroup.procs only root may write, before the first process the code
                # could start. Privileges go after both, or neither could be done.
                resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
                resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
                resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                if group is not None:
                    group.join()
                self._drop_privileges(owner.uid)
                # Last: the parent's descriptors are still open here (they are closed just before
                # exec), so a lower limit set earlier would make join()'s open() fail with EMFILE
                # in a process that holds many files or sockets.
                resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))

            status_r, status_w = os.pipe()
            seccomp_fd = _seccomp.program_fd(proxy is not None)
            argv = [PYTHON, "-I", "-c", _launcher.SOURCE, str(nproc), str(status_w), _launcher.SOCKET if proxy else ""]
            try:
                proc = subprocess.Popen(
                    ["bwrap", *self._flags(scratch, limits, proxy, seccomp_fd), *SEAL, *argv],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=child_setup,
                    start_new_session=True, close_fds=True, pass_fds=(seccomp_fd, status_w), env={},
                )  # fmt: skip
            finally:
                os.close(seccomp_fd)
                os.close(status_w)
        except BaseException:
            if group is not None:
                group.close()
            if status_r >= 0:
                os.close(status_r)
            remove_tree(scratch)
            owner.release()
            raise
        started = Started(self.name, proc, scratch, limits, group, status_r)
        started.cleanup = owner.release  # after the group is emptied and the scratch removed
        return started


@functools.cache
def _netns() -> int:
    """This process's network namespace (its inode): where the uids' locks live."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def sweep_leftovers() -> None:
    """Remove what the sandboxes of dead supervisors left on this host (a worker killed with
    SIGKILL while its sandbox ran leaves its scratch directory, with the code's files, and an
    empty cgroup). As root only: there each leftover is named after its sandbox's uid, and the
    supervisor holds that uid from before either is made until after both are removed, so a uid
    nobody holds marks leftovers, never a live sandbox's. The uid's lock is an abstract socket,
    one per network namespace, so the names also hold the supervisor's namespace, and only this
    one's are swept. The sweep holds the uid meanwhile, so no new sandbox takes it."""
    if os.getuid() != 0:
        return
    here = str(_netns())
    found: dict[int, tuple[list[Path], list[Path]]] = {}  # uid -> (its scratch dirs, its cgroups)
    places = [(Path(tempfile.gettempdir()).glob("wflo-sbx-*-*-*"), 0), (_cgroup.CGroup.named("wflo-sbx-"), 1)]
    for paths, kind in places:
        for path in paths:
            # Only a supervisor of this network namespace holds its uid where this one can see it.
            parts = path.name.split("-")
            uid = int(parts[2]) if len(parts) >= 5 and parts[3] == here and parts[2].isdigit() else -1
            if UID_BASE <= uid < UID_BASE + UID_COUNT:
                found.setdefault(uid, ([], []))[kind].append(path)
    swept = 0
    for uid, (scratches, groups) in found.items():
        held = SandboxUid.take(uid)
        if held is None:
            continue  # a live sandbox's
        try:
            if groups:
                _cgroup.CGroup({str(i): d for i, d in enumerate(groups)}, _cgroup.version()).close()
            for scratch in scratches:
                remove_tree(scratch)
            swept += 1
        finally:
            held.release()
    if swept:
        log.info("wflo sandbox: removed what %d sandboxes of dead supervisors left", swept)


def unavailable(stderr: str, attempts: int) -> SandboxUnavailableError:
    """The error for a sandbox that did not start, with bwrap's (or the launcher's) reason."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("bwrap:")), lines[-1] if lines else "no reason given")
    tries = f" (tried {attempts} times)" if attempts > 1 else ""
    short = any(t in reason for t in TRANSIENT)
    return SandboxUnavailableError(
        backend="bwrap",
        detail=f"the sandbox could not start{tries}: {reason.strip()[:300]}",
        hint=("The host is short of processes, memory or namespaces. " if short else "")
        + "See docs/sandbox.md, 'When a sandbox cannot start'.",
    )
