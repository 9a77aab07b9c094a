"""P4: a corpus of hostile programs, each with its expected outcome, run as root on this host.

Each program prints ESCAPED if it got what it wanted; "contained" means it ran, and neither its
output nor a host-side check shows an escape. "killed:X" means the named limit stopped it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wflo.sandbox import Sandbox
from wflo.sandbox._cgroup import CGroup

SECRET = Path("/tmp/wflo-host-secret.txt")
OUTSIDE = Path("/tmp/wflo-escape-marker")

CORPUS: list[tuple[str, str, str]] = [
    ("read /etc/shadow", "print('ESCAPED' if open('/etc/shadow').read() else '')", "contained"),
    ("read /etc/passwd", "print('ESCAPED' if 'root:' in open('/etc/passwd').read() else '')", "contained"),
    ("read a host secret file", f"print('ESCAPED', open('{SECRET}').read())", "contained"),
    (
        "list the host root",
        "import os; print('ESCAPED' if {'root', 'etc', 'home', 'var'} & set(os.listdir('/')) else os.listdir('/'))",
        "contained",
    ),
    (
        "read the environment",
        "import os; print('ESCAPED' if any(k.startswith(('WFLO_SECRET', 'OPENAI')) for k in os.environ) else sorted(os.environ))",
        "contained",
    ),
    (
        "read /proc/1/environ",
        "print('ESCAPED' if b'WFLO_SECRET' in open('/proc/1/environ','rb').read() else '')",
        "contained",
    ),
    (
        "parent's environ via /proc",
        "import os; [print('ESCAPED') for p in os.listdir('/proc') if p.isdigit() and b'WFLO_SECRET' in open(f'/proc/{p}/environ','rb').read()]",
        "contained",
    ),
    ("write outside scratch (/tmp is private)", f"open('{OUTSIDE}','w').write('x'); print('wrote')", "contained"),
    ("write to /usr", "open('/usr/bin/evil','w').write('x'); print('ESCAPED')", "contained"),
    (
        "symlink to a host file",
        f"import os; os.symlink('{SECRET}', 'link'); print('ESCAPED', open('link').read())",
        "contained",
    ),
    (
        "symlink to /etc/shadow left for the supervisor",
        "import os; os.symlink('/etc/shadow', '/work/shadow-link'); print('ok')",
        "contained",
    ),
    ("hardlink to a host binary", "import os; os.link('/usr/bin/python3', '/work/py'); print('ESCAPED')", "contained"),
    (
        "write /proc/sys/kernel/core_pattern",
        "open('/proc/sys/kernel/core_pattern','w').write('|/tmp/pwn'); print('ESCAPED')",
        "contained",
    ),
    ("sysrq trigger", "open('/proc/sysrq-trigger','w').write('h'); print('ESCAPED')", "contained"),
    (
        "mount a filesystem",
        "import ctypes; libc=ctypes.CDLL(None); r=libc.mount(b'none', b'/tmp', b'tmpfs', 0, None); print('ESCAPED' if r == 0 else 'refused')",
        "contained",
    ),
    (
        "nested user namespace",
        "import ctypes; libc=ctypes.CDLL(None); r=libc.unshare(0x10000000); print('ESCAPED' if r == 0 else 'refused')",
        "contained",
    ),
    (
        "new mount namespace",
        "import ctypes; libc=ctypes.CDLL(None); r=libc.unshare(0x00020000); print('ESCAPED' if r == 0 else 'refused')",
        "contained",
    ),
    (
        "keyctl (kernel keyring)",
        "import ctypes; libc=ctypes.CDLL(None); r=libc.syscall(250, 0, -3, 0, 0, 0); print('ESCAPED' if r >= 0 else 'refused')",
        "contained",
    ),
    (
        "bpf program load",
        "import ctypes; libc=ctypes.CDLL(None); r=libc.syscall(321, 5, ctypes.create_string_buffer(128), 128); print('ESCAPED' if r >= 0 else 'refused')",
        "contained",
    ),
    (
        "TIOCSTI terminal injection",
        "import fcntl, termios, os\nfd = os.open('/dev/tty', os.O_RDWR) if os.path.exists('/dev/tty') else 0\ntry:\n    fcntl.ioctl(fd, termios.TIOCSTI, b'x'); print('ESCAPED')\nexcept OSError as e: print('refused', e)",
        "contained",
    ),
    (
        "perf_event_open",
        "import ctypes; libc=ctypes.CDLL(None); r=libc.syscall(298, ctypes.create_string_buffer(128), 0, -1, -1, 0); print('ESCAPED' if r >= 0 else 'refused')",
        "contained",
    ),
    (
        "raw packet socket",
        "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print('ESCAPED')",
        "contained",
    ),
    (
        "netlink socket",
        "import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); print('ESCAPED')",
        "contained",
    ),
    (
        "memory across many processes",
        "import os\nfor _ in range(8):\n    if os.fork() == 0:\n        x = bytearray(200 * 1024 * 1024); import time; time.sleep(3); os._exit(0)\nos.wait(); print('done')",
        "killed:memory" if CGroup.available() else "contained",
    ),
    (
        "unshare via the command",
        "import subprocess; r = subprocess.run(['unshare','-r','id'], capture_output=True); print('ESCAPED' if r.returncode == 0 else 'refused')",
        "contained",
    ),
    (
        "tcp to loopback (PostgreSQL)",
        "import socket; socket.create_connection(('127.0.0.1', 5432), timeout=2); print('ESCAPED')",
        "contained",
    ),
    (
        "tcp to an outside address",
        "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2); print('ESCAPED')",
        "contained",
    ),
    (
        "udp out",
        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('8.8.8.8', 53)); print('ESCAPED')",
        "contained",
    ),
    ("dns lookup", "import socket; print('ESCAPED', socket.gethostbyname('pypi.org'))", "contained"),
    (
        "unix socket on a host path",
        "import socket; s=socket.socket(socket.AF_UNIX); s.connect('/var/run/postgresql/.s.PGSQL.5432'); print('ESCAPED')",
        "contained",
    ),
    ("kill the parent", "import os; os.kill(os.getppid(), 9); os.kill(1, 9); print('tried')", "contained"),
    (
        "ptrace pid 1",
        "import ctypes; libc=ctypes.CDLL(None); r=libc.ptrace(16, 1, 0, 0); print('ESCAPED' if r == 0 else 'refused')",
        "contained",
    ),
    (
        "ptrace a forked child",
        "import ctypes, os, time; libc=ctypes.CDLL(None)\npid = os.fork()\nif pid == 0: time.sleep(5); os._exit(0)\nr = libc.ptrace(16, pid, 0, 0); print('ESCAPED' if r == 0 else 'refused'); os.kill(pid, 9)",
        "contained",
    ),
    (
        "read another process's memory",
        "import ctypes, os; libc=ctypes.CDLL(None); r=libc.syscall(310, 1, 0, 0, 0, 0, 0); print('ESCAPED' if r >= 0 else 'refused')",
        "contained",
    ),
    ("ctypes read of host memory", "import ctypes; print(ctypes.string_at(0x1000, 8))", "contained"),
    (
        "see host processes",
        "import os; print('ESCAPED' if len([p for p in os.listdir('/proc') if p.isdigit()]) > 10 else 'few')",
        "contained",
    ),
    ("fork bomb", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", "killed"),
    (
        "thread bomb",
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()",
        "killed",
    ),
    ("memory bomb", "x = []\nwhile True: x.append(bytearray(10**7))", "killed:memory"),
    ("cpu spin", "while True: pass", "killed:cpu"),
    ("infinite output", "while True: print('y' * 1000)", "killed:output"),
    ("sleep past the deadline", "import time; time.sleep(60)", "killed:timeout"),
    ("disk fill", "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'0' * 1_000_000); i += 1", "killed"),
    ("many open files", "fs = [open('/dev/null') for _ in range(100000)]; print('ESCAPED')", "contained"),
    (
        "leave a background process",
        "import subprocess; subprocess.Popen(['sleep', '300'], start_new_session=True); print('spawned')",
        "contained",
    ),
    (
        "io_uring setup",
        "import ctypes; libc=ctypes.CDLL(None); r=libc.syscall(425, 8, ctypes.create_string_buffer(120)); print('io_uring fd', r)",
        "contained",
    ),
    (
        "mknod a block device",
        "import os; os.mknod('/work/sda', 0o600 | 0o060000, os.makedev(8, 0)); print('ESCAPED', open('/work/sda', 'rb').read(16))",
        "contained",
    ),
    ("setuid to root", "import os; os.setuid(0); print('ESCAPED' if os.getuid() == 0 else '')", "contained"),
]


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    SECRET.write_text("host-secret-value")
    os.environ["WFLO_SECRET_TOKEN"] = "sk-do-not-leak"
    try:
        yield Sandbox(memory="256MiB", cpu_seconds=2, wall="4s", processes=32, output="64KiB", file_size="4MiB")
    finally:
        os.environ.pop("WFLO_SECRET_TOKEN", None)
        SECRET.unlink(missing_ok=True)


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.fixture(scope="module")
def warm_box(box: Sandbox) -> Iterator[Sandbox]:
    with Sandbox(
        memory="256MiB", cpu_seconds=2, wall="4s", processes=32, output="64KiB", file_size="4MiB", pool=2
    ) as warm:
        yield warm


@pytest.fixture(scope="module")
def gvisor_box(box: Sandbox) -> Sandbox:
    if shutil.which("runsc") is None:
        if os.environ.get("CI"):
            pytest.fail("runsc (Debian package runsc) is required in CI")
        pytest.skip("gVisor's runsc is not installed (apt-get install runsc)")
    return Sandbox(
        memory="256MiB", cpu_seconds=2, wall="6s", processes=32, output="64KiB", file_size="4MiB", backend="runsc"
    )


# The same boundary for a warm (pooled) sandbox and for the gVisor backend, on a cross-section.
SUBSET = [c for c in CORPUS if c[0] in {
    "read /etc/shadow", "read a host secret file", "read the environment", "parent's environ via /proc",
    "write to /usr", "write /proc/sys/kernel/core_pattern", "tcp to loopback (PostgreSQL)", "udp out",
    "unix socket on a host path", "nested user namespace", "ptrace a forked child", "kill the parent",
    "fork bomb", "memory bomb", "sleep past the deadline", "leave a background process", "io_uring setup",
}]  # fmt: skip


@pytest.mark.parametrize(("name", "code", "expected"), CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_program(box: Sandbox, name: str, code: str, expected: str) -> None:
    _check(box, name, code, expected)


@pytest.mark.parametrize(("name", "code", "expected"), SUBSET, ids=[c[0] for c in SUBSET])
def test_hostile_program_in_a_warm_sandbox(warm_box: Sandbox, name: str, code: str, expected: str) -> None:
    _check(warm_box, name, code, expected)


# gVisor implements ptrace and user namespaces inside its own kernel (the Sentry): tracing one's
# own child or making a namespace there succeeds and reaches nothing on the host, so those two
# programs "succeed" harmlessly and are left out of its cross-section.
GVISOR = [c for c in SUBSET if c[0] not in {"nested user namespace", "ptrace a forked child"}]


@pytest.mark.parametrize(("name", "code", "expected"), GVISOR, ids=[c[0] for c in GVISOR])
def test_hostile_program_under_gvisor(gvisor_box: Sandbox, name: str, code: str, expected: str) -> None:
    _check(gvisor_box, name, code, expected)


def _check(box: Sandbox, name: str, code: str, expected: str) -> None:
    OUTSIDE.unlink(missing_ok=True)
    with open("/proc/sys/kernel/core_pattern") as fh:
        core_before = fh.read()
    sleeps_before = _sleepers()
    result = box.run_python(code)
    assert "ESCAPED" not in result.stdout, (name, result.stdout, result.stderr[-300:])
    assert "host-secret-value" not in result.stdout and "sk-do-not-leak" not in result.stdout
    # Host-side checks: nothing changed out here.
    assert not OUTSIDE.exists(), "the sandbox wrote to the host's /tmp"
    with open("/proc/sys/kernel/core_pattern") as fh:
        assert fh.read() == core_before
    assert not Path("/usr/bin/evil").exists()
    time.sleep(0.05)
    assert _sleepers() <= sleeps_before, "a sandboxed process outlived the sandbox"
    assert all(not content.startswith(b"root:") for content in result.files.values()), "a link was followed back"
    if expected.startswith("killed"):
        assert result.killed_by is not None or result.exit_code not in (0, None), (name, result)
        if ":" in expected:
            assert result.killed_by == expected.split(":", 1)[1], (name, result.killed_by, result.stderr[-200:])
    assert result.duration_ms < 10_000


def _sleepers() -> int:
    out = subprocess.run(["pgrep", "-f", "sleep 300"], capture_output=True, text=True)
    return len(out.stdout.split())
