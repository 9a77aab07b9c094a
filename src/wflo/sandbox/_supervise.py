"""The supervisor's side of a running sandbox: feed it, watch it, judge how it ended, clean up.

The supervisor runs with the host's rights (root, often), so it must never block on, follow or
trust what sandboxed code leaves behind: stdin is written without blocking (a program that
reads nothing cannot stall it), the wall-clock deadline holds even after the code closes its
output, and files are taken back only when they are regular files, opened without following
links and without blocking (a FIFO, a socket or a device node is skipped, never opened), with
a cap on bytes and on the number of entries walked.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import selectors
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import _cgroup
from ._base import Limits, SandboxResult

log = logging.getLogger("wflo")
MAX_FILES_BACK = 16 * 1024 * 1024
MAX_ENTRIES = 10_000
"""Files and directories the code may leave in ``/work``; more is killed as ``disk``."""


class Started:
    """A running sandbox and the supervisor's view of it.

    ``status`` is the read end of the launcher's ready pipe (``_launcher``): the launcher
    writes one byte once bwrap has built the sandbox and the interpreter runs inside it. A
    sandbox that ends without that byte never started, and its result says
    ``killed_by="unavailable"`` with bwrap's reason in ``stderr``.
    """

    def __init__(
        self,
        backend: str,
        proc: subprocess.Popen[bytes],
        scratch: Path,
        limits: Limits,
        group: _cgroup.CGroup | None,
        status: int | None = None,
    ) -> None:
        self.backend, self.proc, self.scratch, self.limits, self.group = backend, proc, scratch, limits, group
        self.status = status
        self.ready = status is None
        self.cleanup: Callable[[], None] | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for the launcher's ready byte (False: it died or is late)."""
        if self.ready or self.status is None:
            return self.ready
        sel = selectors.DefaultSelector()
        sel.register(self.status, selectors.EVENT_READ)
        try:
            if sel.select(timeout):
                self.ready = os.read(self.status, 1) == b"R"
        finally:
            sel.close()
        return self.ready

    def finish(self, stdin: bytes | None) -> SandboxResult:
        """Feed stdin, enforce the wall/output/disk caps, collect the result and clean up."""
        proc = self.proc
        t0 = time.perf_counter()
        try:
            try:
                out, err, killed_by = _collect(self, stdin or b"", t0)
                if killed_by is None:
                    try:  # the code may close its output and live on: the deadline still holds
                        proc.wait(timeout=max(0.05, self.limits.wall - (time.perf_counter() - t0)))
                    except subprocess.TimeoutExpired:
                        killed_by = "cpu" if _cpu_bound(self) else "timeout"
                killed_here = killed_by is not None
                self._kill()
                code = proc.wait()
            finally:
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        with contextlib.suppress(OSError):
                            stream.close()
            self._read_status()
            duration = (time.perf_counter() - t0) * 1000
            stderr = err.decode("utf-8", "replace")
            if not self.ready:
                return SandboxResult(stdout="", stderr=stderr, exit_code=None, killed_by="unavailable",
                                     duration_ms=duration, backend=self.backend)  # fmt: skip
            if killed_by is None and self.group is not None and self.group.memory_exceeded():
                killed_by = "memory"
            if killed_by is None:
                killed_by = _classify(code, stderr)
            return SandboxResult(
                stdout=out.decode("utf-8", "replace"), stderr=stderr,
                exit_code=None if killed_here else code,
                killed_by=killed_by, duration_ms=duration, files=files_back(self.scratch), backend=self.backend,
            )  # fmt: skip
        finally:
            self.close(later=True)

    def _read_status(self) -> None:
        if self.ready or self.status is None:
            return
        os.set_blocking(self.status, False)
        with contextlib.suppress(BlockingIOError, OSError):
            self.ready = os.read(self.status, 1) == b"R"

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def close(self, *, later: bool = False) -> None:
        """Kill the sandbox (now, always). Removing its cgroup and scratch directory takes a
        few milliseconds more; with ``later=True`` that is done off the caller's path."""
        self._kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.status is not None:
            with contextlib.suppress(OSError):
                os.close(self.status)
            self.status = None
        if later:
            janitor.put(self._remove)
        else:
            self._remove()

    def _remove(self) -> None:
        if self.group is not None:
            self.group.close()  # also kills anything that left the process group
        remove_tree(self.scratch)
        if self.cleanup is not None:
            self.cleanup()


def remove_tree(root: Path) -> None:
    """``rm -rf`` that also copes with trees too deep for ``shutil.rmtree``'s recursion and
    with directories the code took its own rights away from (``chmod 0``): as an ordinary user
    the supervisor has the sandbox's uid, and such a directory could not be listed or emptied,
    so the scratch stayed on the host's disk, one per run."""
    for attempt in range(2):
        try:
            shutil.rmtree(root)
            return
        except FileNotFoundError:
            return
        except PermissionError:
            if attempt == 0:
                _give_back_rights(root)
        except (OSError, RecursionError):
            break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(root)], capture_output=True, timeout=120)


def _give_back_rights(root: Path) -> None:
    """``chmod 700`` every directory under ``root`` (the sandbox is gone by now), never
    following a link: only what ``lstat`` says is a directory is changed or entered."""
    stack = [str(root)]
    while stack:
        path = stack.pop()
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                continue
            os.chmod(path, 0o700)
            with os.scandir(path) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue


class _Janitor:
    """One background thread that removes finished sandboxes' cgroups and scratch directories
    and gives back their uids; what is still queued at exit is done before the process ends."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done = threading.Condition()
        self._pending = 0  # jobs put and not finished: queued, or taken by the thread
        self._thread: threading.Thread | None = None

    def put(self, job: Callable[[], None]) -> None:
        with self._done:
            self._pending += 1
        self._queue.put(job)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="wflo-sandbox-janitor", daemon=True)
                self._thread.start()
                atexit.register(self.drain)

    def _work(self) -> None:
        while True:
            self._run(self._queue.get())

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:  # a directory that will not go away must not stop the others
            log.exception("wflo sandbox: clean-up failed")
        finally:
            with self._done:
                self._pending -= 1
                self._done.notify_all()

    def drain(self) -> None:
        """Do what is queued here, then wait for the job the thread has in hand. (Waiting on
        a lock the thread holds while it runs a job was not enough: between taking a job off
        the queue and taking that lock, the thread held a job that ``drain`` did not see.)"""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            self._run(job)
        with self._done:
            self._done.wait_for(lambda: self._pending == 0)


janitor = _Janitor()


def _collect(st: Started, stdin: bytes, t0: float) -> tuple[bytes, bytes, str | None]:
    proc, limits = st.proc, st.limits
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    if st.status is not None and not st.ready:
        sel.register(st.status, selectors.EVENT_READ, "status")
    pending = memoryview(stdin)
    if proc.stdin is not None:
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE, "in")
        else:
            proc.stdin.close()
    bufs = {"out": bytearray(), "err": bytearray()}
    killed_by: str | None = None
    open_streams = 2
    last_disk_check = 0.0
    while open_streams:
        remaining = limits.wall - (time.perf_counter() - t0)
        if remaining <= 0:
            killed_by = "cpu" if _cpu_bound(st) else "timeout"
            break
        for key, _ in sel.select(timeout=min(remaining, 0.1)):
            fd = key.fd
            if key.data == "in":
                try:
                    pending = pending[os.write(fd, pending[:65536]) :]
                except BlockingIOError:
                    continue
                except OSError:  # the program closed its stdin: the rest is not wanted
                    pending = pending[:0]
                if not pending:
                    sel.unregister(key.fileobj)
                    with contextlib.suppress(OSError):
                        key.fileobj.close()  # type: ignore[union-attr]
                continue
            chunk = os.read(fd, 65536)
            if key.data == "status":
                st.ready = st.ready or chunk == b"R"
                sel.unregister(key.fileobj)
                continue
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
            if _disk_usage(st.scratch) > limits.file_size * 4:
                killed_by = "disk"
                break
    sel.close()
    if killed_by is not None:
        st._kill()
    total = limits.output
    return bytes(bufs["out"][:total]), bytes(bufs["err"][: max(0, total - len(bufs["out"]))]), killed_by


def _walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every entry under ``root``, iteratively (no recursion limit),
    never following links, at most ``MAX_ENTRIES + 1`` entries."""
    out: list[tuple[str, os.stat_result]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            out.append((path, st))
            if len(out) > MAX_ENTRIES:
                return out
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
    return out


def _disk_usage(root: Path) -> int:
    """Bytes the scratch holds on disk (allocated blocks: a sparse file costs what it uses);
    a tree past ``MAX_ENTRIES`` entries counts as over any cap."""
    entries = _walk(root)
    if len(entries) > MAX_ENTRIES:
        return 1 << 62
    return sum(st.st_blocks * 512 for _, st in entries)


def _cpu_bound(st: Started) -> bool:
    """At the wall deadline: did some process want the CPU for its whole CPU allowance?

    Time on a CPU plus time waiting in the run queue (``/proc/PID/schedstat``) is the CPU a
    process would have used on an idle machine. On a loaded host a spinning program reaches
    the wall deadline before ``RLIMIT_CPU``; it is still a CPU hog, not a slow sleeper."""
    limit = st.limits.cpu_seconds * 1e9
    for pid in _tree(st):
        total = 0
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    run, wait = fh.read().split()[:2]
                    total += int(run) + int(wait)
        if total >= limit:
            return True
    return False


def _tree(st: Started) -> list[int]:
    """The sandbox's processes: its cgroup's, or the supervisor's child's descendants."""
    if st.group is not None and "pids" in st.group.dirs:
        with contextlib.suppress(OSError, ValueError):
            return [int(p) for p in (st.group.dirs["pids"] / "cgroup.procs").read_text().split()]
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(name))
    out, todo = [], [st.proc.pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _classify(code: int, stderr: str) -> str | None:
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr or "std::bad_alloc" in stderr:
        return "memory"
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    if signum == signal.SIGXCPU and code != 0:
        return "cpu"
    if signum == signal.SIGXFSZ:
        return "disk"
    return None


def files_back(scratch: Path) -> dict[str, bytes]:
    """Regular files the code left in /work. Links are never followed, at any depth: each
    directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a directory
    swapped for a link to ``/etc`` while the walk runs leads nowhere (this runs with the
    supervisor's rights). FIFOs, sockets and device nodes are never opened (opening a FIFO
    blocks until a writer comes). Files deeper than ``MAX_DEPTH`` directories, and files and
    directories whose names are not UTF-8, are not returned."""
    out: dict[str, bytes] = {}
    budget = [MAX_FILES_BACK, MAX_ENTRIES]
    try:
        top = os.open(scratch, _DIR)
    except OSError:
        return out
    _take_back(top, "", 0, out, budget)
    return out


MAX_DEPTH = 64
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


def _take_back(dirfd: int, rel: str, depth: int, out: dict[str, bytes], budget: list[int]) -> None:
    """Read back the regular files under ``dirfd`` (closed here); ``budget`` is [bytes, entries]."""
    try:
        with os.scandir(dirfd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            budget[1] -= 1
            if budget[1] < 0:
                return
            if not _utf8(entry.name):
                continue  # not text: it could not be journaled, shown or sent to a model
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth < MAX_DEPTH:
                    with contextlib.suppress(OSError):
                        _take_back(os.open(entry.name, _DIR, dir_fd=dirfd), path, depth + 1, out, budget)
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > budget[0]:
                continue
            data = _read_regular(dirfd, entry.name, st, budget[0])
            if data is not None:
                budget[0] -= len(data)
                out["/work/" + path] = data
    except OSError:
        return
    finally:
        os.close(dirfd)


def _utf8(name: str) -> bool:
    """Whether a file name read from the scratch is UTF-8 (else it holds surrogate escapes)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _read_regular(dirfd: int, name: str, seen: os.stat_result, limit: int) -> bytes | None:
    try:
        fd = os.open(name, _FILE, dir_fd=dirfd)
    except OSError:
        return None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
            return None  # swapped since the directory was read
        data = bytearray()
        while len(data) < min(now.st_size, limit):
            chunk = os.read(fd, min(1 << 20, limit - len(data)))
            if not chunk:
                break
            data += chunk
        return bytes(data)
    except OSError:
        return None
    finally:
        os.close(fd)
