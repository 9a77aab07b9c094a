"""The ``bwrap`` backend: Linux namespaces through Debian's bubblewrap, started unprivileged.

Isolation: new user, pid, network, mount, ipc, uts and cgroup namespaces (``--unshare-all``
plus ``--unshare-user``), no nested user namespaces (``--disable-userns``), a new session
(no terminal injection), death with its parent, an empty environment, a root file system that
holds only read-only ``/usr`` (and its ``/bin``, ``/lib`` links), a fresh ``/proc`` and
``/dev``, a size-capped tmpfs ``/tmp`` and the scratch directory ``/work``. No host ``/etc``,
home, project files or sockets exist inside. With no network namespace shared there is no
route anywhere, loopback included.

**Never as root.** bwrap started by root maps the sandbox to host uid 0 (a known escape: the
code could write ``/proc/sys/kernel/core_pattern``). When wflo runs as root, the supervisor
switches to the unprivileged ``nobody`` uid (65534) before starting bwrap; the scratch
directory is handed to that uid.

Limits: rlimits on address space, CPU time, processes, file size and open files; a wall-clock
deadline, an output cap and a scratch-disk cap enforced by the supervisor, which kills the
whole sandbox (its pid namespace dies with bwrap).

A seccomp filter (``_seccomp.py``) refuses the system calls that reach past those namespaces
(ptrace, mounts, new namespaces, keyrings, BPF, io_uring, perf, ``TIOCSTI``, non-``AF_UNIX``
sockets), and where the host lets root create cgroups (v1 or v2), each execution gets its own
memory and pids group (``_cgroup.py``), so the memory limit also bounds the sum of processes.

Warm pool: ``BwrapPool`` keeps sandboxes started and waiting (namespaces made, interpreter
loaded, seccomp on) for their one program, which arrives on stdin; each is used once.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .._errors import SandboxUnavailableError, UserError
from . import _cgroup, _seccomp
from ._base import Limits, SandboxBackend, SandboxResult

PYTHON = "/usr/bin/python3"
log = logging.getLogger("wflo")
SANDBOX_UID = 65534
SANDBOX_GID = 65534
_MAX_FILES_BACK = 16 * 1024 * 1024


def _work_path(path: str) -> str:
    """A granted path must stay inside /work."""
    norm = os.path.normpath(path)
    if not norm.startswith("/work/") or ".." in Path(norm).parts:
        raise UserError(f"sandbox files go under /work/, got {path!r}")
    return norm


def fill_scratch(scratch: Path, files: Mapping[str, bytes]) -> None:
    """Put the granted ``files`` in the scratch directory and, when wflo runs as root, hand
    it all to the sandbox's uid (links are not followed)."""
    for path, content in files.items():
        target = scratch / _work_path(path)[len("/work/") :]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    if os.getuid() == 0:
        for p in [scratch, *scratch.rglob("*")]:
            os.chown(p, SANDBOX_UID, SANDBOX_GID, follow_symlinks=False)


# A warm sandbox's first program: read one header line from fd 0 (unbuffered, so the rest of
# stdin stays for the program), then run Python source in this interpreter or exec a command.
_LOADER = """def _load():
    import json, os, sys
    b = bytearray()
    while not b.endswith(b"\\n"):
        c = os.read(0, 1)
        if not c:
            raise SystemExit(0)
        b += c
    h = json.loads(b)
    if h["python"] is None:
        os.execvp(h["argv"][0], h["argv"])
    sys.argv = ["-c"]
    m = sys.modules["__main__"].__dict__
    for k in [k for k in m if k not in ("__name__", "__doc__", "__builtins__", "__loader__", "__spec__", "__package__")]:
        del m[k]
    return compile(h["python"], "<string>", "exec")
exec(_load(), __import__("sys").modules["__main__"].__dict__)
"""


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
        try:
            probe = subprocess.run(
                [exe, *self._flags(Path("/tmp"), Limits(memory=256 << 20, cpu_seconds=5, wall=5, processes=8, output=1024, file_size=1024), False, seccomp_fd), "/usr/bin/true"],
                capture_output=True, text=True, timeout=20, preexec_fn=self._drop_privileges, start_new_session=True,
                pass_fds=(seccomp_fd,),
            )  # fmt: skip
        finally:
            os.close(seccomp_fd)
        if probe.returncode != 0:
            raise SandboxUnavailableError(
                backend="bwrap",
                detail=f"user namespaces are not usable here ({probe.stderr.strip()[:200]})",
                hint="Allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1).",
            )
        self._checked = True

    @staticmethod
    def _drop_privileges() -> None:
        if os.getuid() == 0:
            os.setgroups([])
            os.setgid(SANDBOX_GID)
            os.setuid(SANDBOX_UID)

    def _flags(self, scratch: Path, limits: Limits, network: bool, seccomp_fd: int) -> list[str]:
        flags = [
            "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", "--clearenv",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc", "--dev", "/dev", "--size", str(limits.file_size), "--tmpfs", "/tmp",
            "--bind", str(scratch), "/work", "--chdir", "/work",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--seccomp", str(seccomp_fd),
        ]  # fmt: skip
        if network:
            flags.insert(0, "--share-net")
        return flags

    def run(
        self, argv: Sequence[str], *, limits: Limits, files: Mapping[str, bytes], network: bool, stdin: bytes | None
    ) -> SandboxResult:
        self.check()
        started = self.start(list(argv), limits=limits, files=files, network=network, stdin_pipe=stdin is not None)
        return started.finish(stdin)

    def start(
        self, argv: list[str], *, limits: Limits, files: Mapping[str, bytes], network: bool, stdin_pipe: bool
    ) -> _Started:
        """Start a sandbox running ``argv`` (a warm one runs the loader and waits for its header)."""
        scratch = Path(tempfile.mkdtemp(prefix="wflo-sbx-"))
        try:
            fill_scratch(scratch, files)
            os.chmod(scratch, 0o700)
            group = _cgroup.CGroup.create(limits.memory, limits.processes)

            def child_setup() -> None:
                resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
                resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
                resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                if group is not None:
                    group.join()
                self._drop_privileges()
                # After the switch: the process count is per uid, so it is set for the sandbox's.
                resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
                # Last: the parent's descriptors are still open here (they are closed just before
                # exec), so a lower limit set earlier would make join()'s open() fail with EMFILE
                # in a process that holds many files or sockets.
                resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))

            seccomp_fd = _seccomp.program_fd(network)
            try:
                proc = subprocess.Popen(
                    ["bwrap", *self._flags(scratch, limits, network, seccomp_fd), *argv],
                    stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    preexec_fn=child_setup, start_new_session=True, close_fds=True, pass_fds=(seccomp_fd,), env={},
                )  # fmt: skip
            except BaseException:
                if group is not None:
                    group.close()
                raise
            finally:
                os.close(seccomp_fd)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return _Started(self.name, proc, scratch, limits, group)


class _Started:
    """A running sandbox and the supervisor's view of it."""

    def __init__(
        self, backend: str, proc: subprocess.Popen[bytes], scratch: Path, limits: Limits, group: _cgroup.CGroup | None
    ) -> None:
        self.backend, self.proc, self.scratch, self.limits, self.group = backend, proc, scratch, limits, group

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self, stdin: bytes | None) -> SandboxResult:
        """Feed stdin, enforce the wall/output/disk caps, collect the result and clean up."""
        proc = self.proc
        t0 = time.perf_counter()
        try:
            if stdin is not None and proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(stdin)
                proc.stdin.close()
            try:
                out, err, killed_by = _collect(proc, self.scratch, self.limits, t0)
                code = proc.wait()
            finally:
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
            duration = (time.perf_counter() - t0) * 1000
            stderr = err.decode("utf-8", "replace")
            if killed_by is None and self.group is not None and self.group.memory_exceeded():
                killed_by = "memory"
            if killed_by is None:
                killed_by = _classify(code, stderr)
            return SandboxResult(
                stdout=out.decode("utf-8", "replace"), stderr=stderr,
                exit_code=None if killed_by in ("timeout", "output", "disk") else code,
                killed_by=killed_by, duration_ms=duration, files=_files_back(self.scratch), backend=self.backend,
            )  # fmt: skip
        finally:
            self.close(later=True)

    def close(self, *, later: bool = False) -> None:
        """Kill the sandbox (now, always). Removing its cgroup and scratch directory takes a
        few milliseconds more; with ``later=True`` that is done off the caller's path."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if later:
            _janitor.put(self._remove)
        else:
            self._remove()

    def _remove(self) -> None:
        if self.group is not None:
            self.group.close()  # also kills anything that left the process group
        shutil.rmtree(self.scratch, ignore_errors=True)


class _Janitor:
    """One background thread that removes finished sandboxes' cgroups and scratch directories;
    what is still queued at exit is removed before the process ends."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, job: Callable[[], None]) -> None:
        self._queue.put(job)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="wflo-sandbox-janitor", daemon=True)
                self._thread.start()
                atexit.register(self.drain)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                with self._busy:
                    job()
            except Exception:  # a directory that will not go away must not stop the others
                log.exception("wflo sandbox: clean-up failed")

    def drain(self) -> None:
        with self._busy:  # the job in hand finishes first
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    return
                job()


_janitor = _Janitor()


class BwrapPool:
    """``size`` warm sandboxes with fixed limits, files and network setting; each is used once
    and replaced in the background."""

    def __init__(
        self, backend: BwrapBackend, size: int, *, limits: Limits, files: Mapping[str, bytes], network: bool
    ) -> None:
        self.backend, self.size, self.limits, self.files, self.network = backend, size, limits, dict(files), network
        self._ready: queue.SimpleQueue[_Started] = queue.SimpleQueue()
        self._wanted = threading.Semaphore(0)
        self._closed = False
        self._thread = threading.Thread(target=self._fill, name="wflo-sandbox-pool", daemon=True)
        for _ in range(size):
            self._wanted.release()
        self._thread.start()
        atexit.register(self.close)

    def _spawn(self) -> _Started:
        return self.backend.start([PYTHON, "-I", "-c", _LOADER], limits=self.limits, files=self.files,
                                  network=self.network, stdin_pipe=True)  # fmt: skip

    def _fill(self) -> None:
        while True:
            self._wanted.acquire()
            if self._closed:
                return
            try:
                self._ready.put(self._spawn())
            except Exception:  # the next take() starts cold and reports the real error
                time.sleep(0.5)
                self._wanted.release()

    def take(self) -> _Started | None:
        """A warm sandbox, or ``None`` if none is ready (the caller starts one cold)."""
        while True:
            try:
                started = self._ready.get_nowait()
            except queue.Empty:
                return None
            self._wanted.release()
            if started.alive():
                return started
            started.close()

    def run(self, argv: list[str], python: str | None, stdin: bytes | None) -> SandboxResult:
        started = self.take()
        if started is None:
            if python is not None:
                argv = [PYTHON, "-I", "-c", python]
            return self.backend.run(argv, limits=self.limits, files=self.files, network=self.network, stdin=stdin)
        header = json.dumps({"argv": argv, "python": python}).encode() + b"\n"
        return started.finish(header + (stdin or b""))

    def close(self) -> None:
        self._closed = True
        self._wanted.release()
        while True:
            try:
                self._ready.get_nowait().close()
            except queue.Empty:
                break


def _collect(
    proc: subprocess.Popen[bytes], scratch: Path, limits: Limits, t0: float
) -> tuple[bytes, bytes, str | None]:
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    bufs = {"out": bytearray(), "err": bytearray()}
    killed_by: str | None = None
    open_streams = 2
    last_disk_check = 0.0
    while open_streams:
        remaining = limits.wall - (time.perf_counter() - t0)
        if remaining <= 0:
            killed_by = "timeout"
            break
        for key, _ in sel.select(timeout=min(remaining, 0.1)):
            chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
            if not chunk:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            bufs[key.data] += chunk
        if len(bufs["out"]) + len(bufs["err"]) > limits.output:
            killed_by = "output"
            break
        now = time.perf_counter()
        if now - last_disk_check > 0.2:
            last_disk_check = now
            if _disk_usage(scratch) > limits.file_size * 4:
                killed_by = "disk"
                break
    sel.close()
    if killed_by is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    total = limits.output
    return bytes(bufs["out"][:total]), bytes(bufs["err"][: max(0, total - len(bufs["out"]))]), killed_by


def _disk_usage(root: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _classify(code: int, stderr: str) -> str | None:
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr or "std::bad_alloc" in stderr:
        return "memory"
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    if signum in (signal.SIGXCPU, signal.SIGKILL) and code != 0:
        return "cpu" if signum == signal.SIGXCPU else None
    if signum == signal.SIGXFSZ:
        return "disk"
    return None


def _files_back(scratch: Path) -> dict[str, bytes]:
    """Regular files the code left in /work. Links are never followed: one could point at a
    host file, and this runs with the supervisor's rights."""
    out: dict[str, bytes] = {}
    budget = _MAX_FILES_BACK
    for dirpath, _dirs, names in os.walk(scratch):  # followlinks=False
        for name in sorted(names):
            path = Path(dirpath) / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_size > budget:
                    continue
                budget -= st.st_size
                out["/work/" + str(path.relative_to(scratch))] = fh.read()
    return out
