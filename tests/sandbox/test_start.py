"""Sandboxes that always start: as a busy non-root user, from many threads, in pool bursts;
and a clear error (never a bare exit 1) when one truly cannot start (issue 23)."""

from __future__ import annotations

import os
import pwd
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_escapes import CORPUS, OUTSIDE, SECRET, _sleepers

import wflo
from wflo.sandbox import Sandbox, _bwrap, _cgroup
from wflo.sandbox._cgroup import CGroup
from wflo.sandbox._supervise import _Janitor, janitor

USER = "wflo-sbx-test"
SRC = str(Path(wflo.__file__).resolve().parent.parent)


def _test_user() -> tuple[int, int]:
    """A non-root user of our own (created once), or this process's when not root."""
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
        pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid


def _as(uid: int, gid: int) -> None:
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


@pytest.fixture
def busy_user() -> Iterator[tuple[int, int]]:
    """The test user, running 200 background processes (a desktop session has hundreds)."""
    uid, gid = _test_user()
    sleepers = [
        subprocess.Popen(["sleep", "120"], preexec_fn=lambda: _as(uid, gid), stdin=subprocess.DEVNULL)
        for _ in range(200)
    ]
    try:
        yield uid, gid
    finally:
        for proc in sleepers:
            proc.kill()
        for proc in sleepers:
            proc.wait()


def _run_as(uid: int, gid: int, code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a Python process of that user. The interpreter (this venv's, under /root)
    may be out of the user's reach, so the process starts as root, loads wflo, and switches
    before doing anything else: from then on it is that user's process like any other."""
    preamble = (
        "import os, resource, wflo, wflo.sandbox._pool\n"
        "from wflo._errors import SandboxUnavailableError\n"
        f"if os.getuid() == 0:\n    os.setgroups([]); os.setgid({gid}); os.setuid({uid})\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": SRC, "HOME": "/tmp", "TMPDIR": "/tmp"}
    return subprocess.run(
        [sys.executable, "-c", preamble + code], env=env, cwd="/tmp", capture_output=True, text=True, timeout=90
    )


def test_a_non_root_user_with_200_processes_runs_sandboxes(busy_user: tuple[int, int]) -> None:
    """RLIMIT_NPROC set before bwrap counted all 200 of the user's processes: every start
    failed. Now the limit counts the sandbox's own processes, and still holds."""
    uid, gid = busy_user
    done = _run_as(uid, gid, (
        "import wflo\n"
        "box = wflo.Sandbox(processes=16)\n"
        "for i in range(3):\n"
        "    r = box.run_python(f'import os; print({i}, os.getuid())')\n"
        "    print(repr(r.stdout), r.exit_code, r.killed_by)\n"
        "bomb = box.run_python('import os, time\\nn = 0\\ntry:\\n    for _ in range(64):\\n'\n"
        "                      '        if os.fork() == 0:\\n            time.sleep(5); os._exit(0)\\n'\n"
        "                      '        n += 1\\nexcept OSError as e:\\n    print(n, e.errno)')\n"
        "print(bomb.stdout.strip())\n"
    ))  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [f"'{i} {uid}\\n' 0 None" for i in range(3)], done.stdout
    forked, err = (int(x) for x in lines[3].split())
    assert err == 11 and 10 <= forked <= 16, f"the process limit of 16 allowed {forked} children"


def test_a_sandbox_that_cannot_start_says_why(busy_user: tuple[int, int]) -> None:
    """With no process left for the user, the call raises SandboxUnavailableError naming the
    cause, after retrying; it never looks like the program's own exit 1."""
    uid, gid = busy_user
    code = (
        "box = wflo.Sandbox()\n"
        "def tasks():\n"
        "    n = 0\n"
        "    for p in os.listdir('/proc'):\n"
        "        try:\n"
        "            if p.isdigit() and os.stat(f'/proc/{p}').st_uid == os.getuid(): n += len(os.listdir(f'/proc/{p}/task'))\n"
        "        except OSError: pass\n"
        "    return n\n"
        "for spare in (0, 1):  # 0: not even bwrap can be forked; 1: bwrap is, its namespace's process is not\n"
        "    n = tasks() + spare\n"
        "    resource.setrlimit(resource.RLIMIT_NPROC, (n, resource.getrlimit(resource.RLIMIT_NPROC)[1]))\n"
        "    try:\n"
        "        r = box.run_python('print(1)')\n"
        "        print('RAN', r)\n"
        "    except SandboxUnavailableError as e:\n"
        "        print(type(e).__name__, e.code, str(e).splitlines()[0])\n"
    )
    done = _run_as(uid, gid, code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("SandboxUnavailableError sandbox_unavailable") for line in lines), (
        done.stdout
    )
    assert all(
        "could not start (tried 6 times)" in line and "Resource temporarily unavailable" in line for line in lines
    )


def test_8_threads_x_50_cold_runs_all_start() -> None:
    box = Sandbox(wall="30s")

    def one(i: int) -> tuple[int, str, int | None, str | None]:
        r = box.run_python(f"print({i})")
        return i, r.stdout, r.exit_code, r.stderr

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(400)))
    bad = [(i, out, code, err) for i, out, code, err in results if out != f"{i}\n" or code != 0]
    assert not bad, f"{len(bad)} of 400 failed, e.g. {bad[:3]}"
    assert time.perf_counter() - t0 < 100


def test_200_back_to_back_pool_runs() -> None:
    with Sandbox(pool=4, wall="30s") as box:
        results = [box.run_python(f"print({i})") for i in range(200)]
    bad = [
        (i, r.stdout, r.exit_code, r.stderr[-200:]) for i, r in enumerate(results) if r.stdout != f"{i}\n" or not r.ok
    ]
    assert not bad, f"{len(bad)} of 200 failed, e.g. {bad[:3]}"


def test_each_sandbox_has_a_uid_of_its_own() -> None:
    """As root: never 0, never nobody (which host daemons use), never another sandbox's at the
    same time; and the uid is free again afterwards."""
    if os.getuid() != 0:
        assert Sandbox().run_python("import os; print(os.getuid())").stdout == f"{os.getuid()}\n"
        return
    box = Sandbox(wall="20s")
    with ThreadPoolExecutor(8) as pool:
        uids = list(pool.map(lambda _: box.run_python("import os, time; time.sleep(1); print(os.getuid())"), range(8)))
    seen = [int(r.stdout) for r in uids]
    assert len(set(seen)) == 8, seen
    assert all(_bwrap.UID_BASE <= uid < _bwrap.UID_BASE + _bwrap.UID_COUNT for uid in seen), seen
    janitor.drain()
    for uid in seen:  # released: the name can be taken again
        with socket.socket(socket.AF_UNIX) as probe:
            probe.bind(f"\0wflo-sandbox-uid-{uid}")


def test_pool_burst_from_threads() -> None:
    """The burst that ended in BrokenPipeError: more callers than warm sandboxes, at once."""
    with Sandbox(pool=2, wall="30s") as box, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: (i, box.run_python(f"print({i})")), range(100)))
    assert all(r.stdout == f"{i}\n" and r.ok for i, r in results)


def test_escape_corpus_4_at_a_time() -> None:
    """The boundary holds when sandboxes run side by side."""
    SECRET.write_text("host-secret-value")
    os.environ["WFLO_SECRET_TOKEN"] = "sk-do-not-leak"
    sleeps_before = _sleepers()
    try:
        box = Sandbox(memory="256MiB", cpu_seconds=2, wall="4s", processes=32, output="64KiB", file_size="4MiB")
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda c: (c, box.run_python(c[1])), CORPUS))
    finally:
        os.environ.pop("WFLO_SECRET_TOKEN", None)
        SECRET.unlink(missing_ok=True)
    for (name, _code, expected), r in results:
        assert "ESCAPED" not in r.stdout and "host-secret-value" not in r.stdout and "sk-do-not-leak" not in r.stdout
        assert r.killed_by != "unavailable", name
        if expected.startswith("killed"):
            assert r.killed_by is not None or r.exit_code not in (0, None), (name, r)
            if ":" in expected:
                assert r.killed_by == expected.split(":", 1)[1], (name, r.killed_by, r.stderr[-200:])
    assert not OUTSIDE.exists() and not Path("/usr/bin/evil").exists()
    time.sleep(0.1)
    assert _sleepers() <= sleeps_before, "a sandboxed process outlived its sandbox"


def test_the_cgroup_alone_holds_the_process_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where wflo can make cgroups, the pids group (v2 where the host has it, v1 here otherwise)
    bounds the sandbox by itself: the namespace rlimit is switched off for this test."""
    if not CGroup.available():
        # No group can be made here (not root, or v2 without delegated controllers): the
        # namespace rlimit is what holds, and the busy-user test above exercises it.
        assert "RLIMIT_NPROC" in _bwrap.process_limit_kind()
        return
    made: list[CGroup] = []
    create = CGroup.create.__func__  # type: ignore[attr-defined]
    here = threading.current_thread()

    def spy(cls: type[CGroup], memory: int, processes: int, **kwargs: str) -> CGroup | None:
        group = create(cls, memory, processes, **kwargs)
        if threading.current_thread() is here:  # not a group an earlier test's pool thread makes now
            made.append(group)
        return group

    events: list[str] = []
    close = CGroup.close

    def read_then_close(self: CGroup) -> None:
        if made and self is made[0]:  # the janitor also closes earlier tests' groups meanwhile
            with open(self.dirs["pids"] / "pids.events") as fh:
                events.append(fh.read())
        close(self)

    monkeypatch.setattr(CGroup, "create", classmethod(spy))
    monkeypatch.setattr(CGroup, "close", read_then_close)
    monkeypatch.setattr(_bwrap, "namespaced_nproc", lambda: False)
    r = Sandbox(processes=8, wall="10s").run_python(
        "import os, time\nn = 0\ntry:\n    for _ in range(64):\n        if os.fork() == 0:\n"
        "            time.sleep(3); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)"
    )
    janitor.drain()  # the group is closed (and its events read) off the caller's path
    assert made and made[0].version == _cgroup.version()
    assert r.ok and 4 <= int(r.stdout) <= 10, r
    assert events and "max 0" not in events[0], events


def test_process_limit_kind_is_reported() -> None:
    kind = _bwrap.process_limit_kind()
    assert "RLIMIT_NPROC in the sandbox's user namespace" in kind
    assert ("pids cgroup" in kind) == CGroup.available()


class _SlowHand:
    """A janitor's queue whose thread, having taken a job, is held up before running it (as a
    thread preempted there is)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.taken = threading.Event()

    def put(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def get_nowait(self) -> Callable[[], None]:
        return self.jobs.get_nowait()

    def get(self) -> Callable[[], None]:
        job = self.jobs.get()
        self.taken.set()
        time.sleep(0.3)
        return job


def test_drain_waits_for_the_job_the_janitor_has_taken() -> None:
    """``drain`` (also run at exit) returns only once every job put has run, including one the
    janitor's thread took off the queue and has not run yet: else a sandbox's uid and scratch
    directory were left behind at exit, and a test that drained saw the uid still held."""
    j = _Janitor()
    j._queue = _SlowHand()  # type: ignore[assignment]
    ran: list[int] = []
    j.put(lambda: ran.append(1))
    assert j._queue.taken.wait(5)  # type: ignore[attr-defined]
    j.drain()
    assert ran == [1]
