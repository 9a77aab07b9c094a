"""The supervisor never blocks on what sandboxed code leaves behind (issue 14, finding 6), and
limits are judged robustly under load (issue 15, item 9)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from wflo import UserError
from wflo.sandbox import Sandbox, SandboxResult, _sandbox
from wflo.sandbox._supervise import files_back


def _within(seconds: float, fn: Callable[[], SandboxResult]) -> SandboxResult:
    """Run ``fn`` in a thread: a supervisor that blocks fails the test instead of hanging it."""
    out: list[SandboxResult] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the supervisor blocked for more than {seconds}s"
    if errors:
        raise errors[0]
    return out[0]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("fifo", "import os; os.mkfifo('/work/pipe'); print('left')"),
        ("fifo in a subdirectory", "import os; os.makedirs('/work/a/b'); os.mkfifo('/work/a/b/pipe'); print('left')"),
        ("unix socket", "import socket; s = socket.socket(socket.AF_UNIX); s.bind('/work/sock'); print('left')"),
        (
            "a fifo swapped in for a file",
            "import os; open('/work/x', 'w').write('x'); os.unlink('/work/x'); os.mkfifo('/work/x'); print('left')",
        ),
    ],
)
def test_special_files_are_skipped_not_opened(name: str, code: str) -> None:
    result = _within(20, lambda: Sandbox(wall="5s").run_python(code))
    assert result.ok and result.stdout == "left\n", (name, result)
    assert result.files == {}, name


def test_a_huge_sparse_file_is_not_read_back() -> None:
    code = "f = open('/work/sparse', 'wb'); f.truncate(60 * 1024 * 1024); f.close(); open('/work/small', 'w').write('s'); print('left')"
    result = _within(20, lambda: Sandbox(wall="5s", file_size="64MiB").run_python(code))
    assert result.ok, result
    assert result.files == {"/work/small": b"s"}  # the 60 MiB file is past the 16 MiB taken back
    assert result.killed_by is None, "a sparse file uses no disk; it is not a disk-fill"


def test_many_entries_are_a_disk_fill() -> None:
    code = "import os\nfor i in range(50000):\n    open(f'/work/f{i}', 'w').close()\nprint('left')"
    result = _within(60, lambda: Sandbox(wall="20s").run_python(code))
    assert result.killed_by == "disk", result


def test_deep_directories_do_not_stop_the_supervisor(tmp_path: Path) -> None:
    code = "import os\nfor i in range(3000):\n    os.mkdir('d'); os.chdir('d')\nopen('deep.txt', 'w').write('x')\nprint('left')"
    result = _within(60, lambda: Sandbox(wall="20s").run_python(code))
    assert result.ok and result.stdout == "left\n", result


def test_closing_its_output_does_not_escape_the_deadline() -> None:
    code = "import os, time\nos.close(1); os.close(2)\ntime.sleep(60)"
    result = _within(20, lambda: Sandbox(wall="2s").run_python(code))
    assert result.killed_by == "timeout" and result.exit_code is None, result


def test_stdin_the_program_never_reads_does_not_block() -> None:
    """Writing 8 MiB to a program that reads none of it while it fills its output pipe."""
    result = _within(20, lambda: Sandbox(wall="5s", output="4MiB").run(["sh", "-c", "head -c 200000 /dev/zero"],
                                                                          stdin=b"x" * (8 << 20)))  # fmt: skip
    assert result.ok and len(result.stdout) == 200000, result.stderr


def test_files_back_skips_device_nodes_and_links(tmp_path: Path) -> None:
    """Device nodes cannot be made inside (no CAP_MKNOD); one in the scratch anyway (made here,
    as root) is never opened. Nor is a FIFO or a link."""
    (tmp_path / "file").write_bytes(b"ok")
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/etc/passwd", tmp_path / "link")
    if os.getuid() == 0:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(tmp_path / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    got: list[dict[str, bytes]] = []
    thread = threading.Thread(target=lambda: got.append(files_back(tmp_path)), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "files_back blocked"
    assert got == [{"/work/file": b"ok"}]


def test_pool_is_only_for_bwrap_whether_or_not_runsc_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The misuse is reported as such, before any check of what the host has installed."""
    import shutil

    monkeypatch.setattr(_sandbox, "_backends", {})
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(UserError, match="pool= is available with the bwrap backend"):
        Sandbox(backend="runsc", pool=2)


def test_cpu_spin_is_cpu_even_on_a_loaded_host() -> None:
    """With the CPUs busy, a spinning program reaches the wall deadline before its CPU
    limit; it is still judged ``cpu`` (it wanted the CPU all along), while a sleeper on the
    same loaded host is still a ``timeout``."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(3 * (os.cpu_count() or 1))
    ]
    try:
        box = Sandbox(cpu_seconds=2, wall="3s")
        spin = box.run_python("while True: pass")
        sleep = box.run_python("import time; time.sleep(60)")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert spin.killed_by == "cpu", spin
    assert sleep.killed_by == "timeout", sleep


def test_files_back_never_follows_a_directory_swapped_for_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a dying sandbox could try: /work/a is a directory when listed and a link to a
    host directory when the supervisor descends into it."""
    from wflo.sandbox import _supervise

    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    scratch = tmp_path / "scratch"
    (scratch / "a").mkdir(parents=True)
    (scratch / "a" / "secret.txt").write_text("sandbox's own")
    real_open = os.open
    swapped: list[bool] = []

    def swap_then_open(path: str, flags: int, *args: int, **kwargs: int) -> int:
        if path == "a" and not swapped:  # listed and stat'ed as a directory; now it is a link
            swapped.append(True)
            (scratch / "a" / "secret.txt").unlink()
            (scratch / "a").rmdir()
            (scratch / "a").symlink_to(outside)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(_supervise.os, "open", swap_then_open)
    got = files_back(scratch)
    assert swapped and b"host secret" not in got.values(), got


SUPERVISOR = """
import os, signal, sys, threading, wflo
box = wflo.Sandbox(wall="60s")
threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
box.run(["sh", "-c", "echo x > /work/kept.txt; sleep 50"])
"""


def _leftovers() -> tuple[set[str], set[str]]:
    import tempfile

    from wflo.sandbox import _cgroup

    scratch = {p.name for p in Path(tempfile.gettempdir()).glob("wflo-sbx-*-*-*")}
    return scratch, {p.name for p in _cgroup.CGroup.named("wflo-sbx-")}


@pytest.mark.skipif(os.getuid() != 0, reason="leftovers are named after their sandbox's uid as root only")
def test_what_a_killed_supervisor_left_is_removed_by_the_next_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker killed with SIGKILL while its sandbox ran left its scratch directory (the code's
    # files) and an empty cgroup on the host for good, one per crash. The next process to start a
    # sandbox removes them, and never a live sandbox's (another process's): its uid is held while
    # it runs.
    # The scratch directories are counted in a temporary directory of this test's own (TMPDIR, for
    # this process and its children): sandboxes that other tests (an xdist worker beside this one,
    # another session on the machine) start meanwhile are not counted as this test's. It is in the
    # system's temporary directory and others may pass through it, as the sandbox's uid must.
    import shutil
    import tempfile

    own = tempfile.mkdtemp(prefix="wflo-leftovers-")
    os.chmod(own, 0o711)
    monkeypatch.setenv("TMPDIR", own)
    monkeypatch.setattr(tempfile, "tempdir", own)
    try:
        _killed_supervisor_leftovers_are_swept()
    finally:
        shutil.rmtree(own, ignore_errors=True)


def _killed_supervisor_leftovers_are_swept() -> None:
    before_scratch = _leftovers()[0]
    crashed = subprocess.run([sys.executable, "-c", SUPERVISOR], capture_output=True, text=True, timeout=60)
    assert crashed.returncode == -9, crashed.stderr
    scratch, groups = _leftovers()
    left = scratch - before_scratch
    assert len(left) == 1, "the killed supervisor left no scratch directory: the test tests nothing"
    (name,) = left
    uid = "-".join(name.split("-")[2:4])  # its uid and network namespace
    assert any(g.startswith(f"wflo-sbx-{uid}-") for g in groups), groups

    live: list[SandboxResult] = []
    started = threading.Event()
    runner = threading.Thread(
        target=lambda: live.append(Sandbox(wall="20s").run(["sh", "-c", "echo a > /work/mine.txt; sleep 3"]))
    )
    runner.start()
    for _ in range(200):  # a live sandbox of this process, running while the sweep goes
        if len(_leftovers()[0] - scratch) == 1:
            started.set()
            break
        threading.Event().wait(0.02)
    assert started.is_set(), "the live sandbox never started"
    after = subprocess.run(
        [sys.executable, "-c", "import wflo; print(wflo.Sandbox().run(['true']).exit_code)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert after.stdout.strip() == "0", after.stderr
    scratch_after, groups_after = _leftovers()
    assert name not in scratch_after, "the dead supervisor's scratch directory is still there"
    assert not any(g.startswith(f"wflo-sbx-{uid}-") for g in groups_after), groups_after
    assert len(scratch_after - scratch) == 1, "the live sandbox's scratch directory was swept"
    runner.join(30)
    assert live and live[0].exit_code == 0 and live[0].files.get("/work/mine.txt") == b"a\n", live
