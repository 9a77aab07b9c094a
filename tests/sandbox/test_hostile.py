"""P4, the hostile-code sweep: ways around the sandbox's limits that the escape corpus
(``test_escapes.py``) did not try, each found breaking a promise and fixed.

- Memory held in files and shared memory, not in a process's address space: the root and
  ``/dev`` (bwrap's own tmpfs mounts, unbounded), ``/dev/shm``, memfds and SysV segments. As an
  ordinary user (no memory cgroup) a ``memory="256MiB"`` sandbox held 4 GiB of host memory this
  way; under gVisor, as root, too.
- A file name that is not UTF-8, left in ``/work`` by the code: inside a run, the journal's
  append failed on it (``UnicodeEncodeError``) and the run crashed.
- A directory the code locked (``chmod 0``): as an ordinary user the supervisor could not
  remove the scratch directory, which stayed on the host's disk after each such run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_start import _run_as, _test_user

import wflo
from wflo import _config
from wflo.sandbox import Sandbox
from wflo.sandbox._cgroup import CGroup

# Each way of holding memory outside the address-space limit: 48 MiB in 1 MiB pieces, then
# what it managed to store (MiB), or the error that stopped it.
HOARD = r"""
import ctypes, mmap, os
MiB = 1 << 20
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
keep = []

def files(where):
    for i in range(48):
        with open(f"{where}/hoard{i}", "wb") as fh:
            fh.write(b"h" * MiB)
        yield

def memfds():
    for i in range(48):
        fd = os.memfd_create("hoard")
        os.write(fd, b"h" * MiB)
        keep.append(fd)
        yield

def sysv():
    for i in range(48):
        seg = libc.shmget(0, MiB, 0o1600)
        if seg < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        addr = libc.shmat(seg, None, 0)
        ctypes.memset(addr, 1, MiB)
        libc.shmdt(ctypes.c_void_p(addr))  # the segment outlives the mapping
        yield

for name, way in [("root", lambda: files("")), ("dev", lambda: files("/dev")), ("shm", lambda: files("/dev/shm")),
                  ("tmp", lambda: files("/tmp")), ("memfd", memfds), ("sysv", sysv)]:
    n = 0
    try:
        for _ in way():
            n += 1
    except OSError as e:
        pass
    print(name, n, flush=True)
"""
LIMITS = {"memory": "64MiB", "file_size": "2MiB", "cpu_seconds": 10, "wall": "30s"}


def _stored(stdout: str) -> dict[str, int]:
    return {name: int(n) for name, n in (line.split() for line in stdout.splitlines())}


def _bounded(stored: dict[str, int]) -> None:
    """Nothing on the read-only root or /dev, /dev/shm and /tmp within their size caps, no memfd
    and no SysV segment: with file_size="2MiB", 2 MiB of files in each of the two tmpfs mounts."""
    assert stored == {"root": 0, "dev": 0, "shm": 2, "tmp": 2, "memfd": 0, "sysv": 0}, stored


def test_memory_in_files_and_shared_memory_is_bounded_for_an_ordinary_user() -> None:
    """The user has no memory cgroup: only per-process rlimits held, and none of them counted
    files on bwrap's tmpfs root, memfds or SysV segments (all 48 MiB of each were stored)."""
    uid, gid = _test_user()
    done = _run_as(uid, gid, f"r = wflo.Sandbox(**{LIMITS!r}).run_python({HOARD!r})\nprint(r.stdout, end='')\n")
    assert done.returncode == 0, done.stderr
    _bounded(_stored(done.stdout))


def test_memory_in_files_and_shared_memory_is_bounded_here() -> None:
    """The same as this process (root here, with a memory cgroup: before, the root's files
    reached the group's limit and the run was killed as ``memory``)."""
    r = Sandbox(**LIMITS).run_python(HOARD)  # type: ignore[arg-type]
    assert r.ok, (r.killed_by, r.stderr[-300:])
    _bounded(_stored(r.stdout))


def test_shared_memory_for_python_still_works() -> None:
    """What the standard library needs of /dev/shm (POSIX semaphores, shared_memory) still works
    within its cap."""
    r = Sandbox(wall="30s").run_python(
        "from multiprocessing import Pool, shared_memory\n"
        "m = shared_memory.SharedMemory(create=True, size=4096); m.buf[0] = 7; print(m.buf[0]); m.close(); m.unlink()\n"
        "with Pool(2) as p:\n    print(sum(p.map(abs, range(-5, 5))))\n"
    )
    assert r.ok and r.stdout == "7\n25\n", r.stderr[-500:]


SYSV_BOMB = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
for i in range(16):
    seg = libc.shmget(0, 64 << 20, 0o1600)
    addr = libc.shmat(seg, None, 0)
    ctypes.memset(addr, 1, 64 << 20)
    libc.shmdt(ctypes.c_void_p(addr))
    print(i, flush=True)
print("held 1 GiB")
"""


def test_gvisor_counts_shared_memory_against_the_memory_limit() -> None:
    """gVisor implements SysV shared memory in its own kernel, in host memory no rlimit of the
    code's processes counts: a ``memory="128MiB"`` sandbox held 1 GiB. Now all of gVisor runs in
    a memory cgroup of the limit plus its own overhead, and the program is killed as ``memory``."""
    if shutil.which("runsc") is None:
        if os.environ.get("CI"):
            pytest.fail("runsc (Debian package runsc) is required in CI")
        pytest.skip("gVisor's runsc is not installed (apt-get install runsc)")
    if not CGroup.available():
        pytest.skip("no cgroups here: gVisor's memory is bounded per process only (docs/sandbox.md)")
    r = Sandbox(backend="runsc", memory="128MiB", cpu_seconds=10, wall="30s").run_python(SYSV_BOMB)
    assert "held 1 GiB" not in r.stdout and r.killed_by == "memory", (r.stdout[-100:], r.killed_by, r.stderr[-300:])


NAMES = r"""
import os
open(b"/work/raw\xff\xfe.bin", "wb").write(b"x")
os.mkdir(b"/work/dir\xff")
open(b"/work/dir\xff/inside.txt", "wb").write(b"y")
open("/work/new\nline.txt", "w").write("z")
open("/work/..dots", "w").write("d")
print("left")
"""


def test_file_names_that_are_not_utf8_do_not_break_the_journal(configured: str) -> None:
    """Before: the result's file names held surrogate escapes, and inside a run the journal's
    append raised ``UnicodeEncodeError``: code in the sandbox crashed the run. Such files (and
    what is under such directories) are not taken back; other odd names are, as they are."""
    box = Sandbox(wall="10s")

    @wflo.workflow(name="sbx-hostile-names")
    def names() -> list[str]:
        return sorted(box.run_python(NAMES).files)

    assert names.run() == ["/work/..dots", "/work/new\nline.txt"]
    store = _config.get_store()
    run = store.list_runs(workflow="sbx-hostile-names")[0]
    assert run.status == "succeeded", run
    completed = [e.data for e in store.events(run.id) if e.type == "call.completed"]
    assert completed[-1]["sandbox"]["files"] == ["/work/..dots", "/work/new\nline.txt"]


LOCK_OUT = [
    "import os; os.makedirs('/work/a/b'); open('/work/a/b/f', 'w').write('x'); os.chmod('/work/a', 0)",
    "import os; os.makedirs('/work/d'); open('/work/d/f', 'w').write('x'); os.chmod('/work/d', 0o500)",
    "import os; os.makedirs('/work/e/f'); os.chmod('/work/e/f', 0); os.chmod('/work/e', 0o100); os.chmod('/work', 0)",
]


def test_directories_the_code_locks_do_not_leave_its_scratch_behind() -> None:
    """As an ordinary user the supervisor has the sandbox's uid: a directory the code made
    unreadable or unwritable could not be emptied, and the scratch directory (with the code's
    files) stayed on the host's disk after every such run."""
    uid, gid = _test_user()
    tmp = Path(tempfile.mkdtemp(prefix="wflo-hostile-"))
    tmp.chmod(0o1777)
    try:
        done = _run_as(uid, gid, (
            "import tempfile\n"
            f"tempfile.tempdir = {str(tmp)!r}\n"
            "box = wflo.Sandbox(wall='10s')\n"
            f"for code in {LOCK_OUT!r}:\n"
            "    print(box.run_python(code).ok)\n"
            "from wflo.sandbox._supervise import janitor\n"
            "janitor.drain()\n"
        ))  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["True"] * len(LOCK_OUT), done.stdout
        assert [p.name for p in tmp.iterdir()] == [], "a scratch directory outlived its sandbox"
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
