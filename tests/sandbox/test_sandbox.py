"""The sandbox API: files in and out, limits, the warm pool, backends, and journaling in runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import pytest

import wflo
from wflo import UserError, _config
from wflo.sandbox import Limits, Sandbox, SandboxBackend, SandboxResult, register_backend
from wflo.sandbox._cgroup import CGroup

HERE = Path(__file__).parent


def test_files_in_and_out() -> None:
    box = Sandbox(files={"/work/data.csv": "a,b\n1,2\n", "/work/sub/x.txt": b"x"})
    result = box.run_python(
        "import csv, os\n"
        "rows = list(csv.reader(open('data.csv')))\n"
        "os.mkdir('out')\n"
        "open('/work/out/sum.txt', 'w').write(str(sum(int(v) for v in rows[1])))\n"
        "print(open('sub/x.txt').read())"
    )
    assert result.ok, result.stderr
    assert result.stdout == "x\n"
    assert result.files["/work/out/sum.txt"] == b"3"
    assert result.files["/work/data.csv"] == b"a,b\n1,2\n"


def test_command_with_stdin_and_exit_code() -> None:
    result = Sandbox().run(["sh", "-c", "read x; echo got $x; exit 3"], stdin="hello\n")
    assert result.stdout == "got hello\n"
    assert result.exit_code == 3 and result.killed_by is None and not result.ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory": "lots"}, "memory must be a size"),
        ({"memory": -1}, "memory must be positive"),
        ({"cpu_seconds": 0}, "cpu_seconds must be a positive integer"),
        ({"wall": "soon"}, "wall must be a duration"),
        ({"processes": "many"}, "processes must be a positive integer"),
        ({"files": {"/etc/passwd": b"x"}}, "sandbox files go under /work/"),
        ({"files": {"/work/../etc/x": b"x"}}, "sandbox files go under /work/"),
        ({"backend": "docker"}, "unknown sandbox backend 'docker'"),
        ({"pool": -1}, "pool must be"),
    ],
)
def test_bad_settings_are_user_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        box = Sandbox(**kwargs)  # type: ignore[arg-type]
        box.run_python("pass")


def test_bad_arguments_are_user_errors() -> None:
    box = Sandbox()
    with pytest.raises(UserError, match="argv must be"):
        box.run([])
    with pytest.raises(UserError, match="code must be a string"):
        box.run_python(b"print(1)")  # type: ignore[arg-type]
    # A string is a sequence of strings: run("print(1)") ran "p" with the rest as its arguments.
    with pytest.raises(UserError, match=r"not a string .*run_python\(code\)"):
        box.run("print(6*7)")


def test_killed_by_reports_the_limit() -> None:
    box = Sandbox(memory="128MiB", cpu_seconds=1, wall="20s", output="4KiB")
    assert box.run_python("while True: pass").killed_by == "cpu"
    assert box.run_python("while True: print('y' * 100)").killed_by == "output"
    assert box.run_python("b = bytearray(512 * 1024 * 1024)").killed_by == "memory"
    result = Sandbox(wall="1s").run_python("import time; time.sleep(30)")
    assert result.killed_by == "timeout"
    assert result.exit_code is None and 900 < result.duration_ms < 5000


def test_warm_pool_runs_each_program_in_a_fresh_sandbox() -> None:
    with Sandbox(pool=2, wall="5s", files={"/work/seed.txt": "seed"}) as box:
        time.sleep(0.5)  # let the pool fill
        first = box.run_python("open('left-behind.txt', 'w').write('x'); print(open('seed.txt').read())")
        second = box.run_python("import os; print(sorted(os.listdir('.')))")
        third = box.run(["sh", "-c", "cat; echo"], stdin="piped")
        spin = box.run_python("while True: pass")
    assert first.stdout == "seed\n" and first.files["/work/left-behind.txt"] == b"x"
    assert second.stdout == "['seed.txt']\n", "a warm sandbox saw the previous program's files"
    assert third.stdout == "piped\n"
    assert spin.killed_by in ("cpu", "timeout")
    # The same boundary holds in a warm sandbox: no host files, no network.
    with Sandbox(pool=1) as box:
        time.sleep(0.3)
        probe = box.run_python(
            "import os, socket\nprint(os.path.exists('/etc/shadow'))\nsocket.create_connection(('127.0.0.1', 5432), 1)"
        )
    assert probe.stdout == "False\n" and probe.exit_code != 0


def test_pool_is_only_for_bwrap() -> None:
    with pytest.raises(UserError, match="pool= is available with the bwrap backend"):
        Sandbox(backend="runsc", pool=2)


class _EchoBackend(SandboxBackend):
    """A backend registered by name, as a remote sandbox service would be."""

    name = "echo"
    calls: ClassVar[list[list[str]]] = []

    def check(self) -> None:
        return None

    def run(
        self, argv: Sequence[str], *, limits: Limits, files: Mapping[str, bytes], network: bool, stdin: bytes | None
    ) -> SandboxResult:
        self.calls.append(list(argv))
        return SandboxResult(
            stdout=" ".join(argv[-1:]), stderr="", exit_code=0, killed_by=None, duration_ms=0.1, backend=self.name
        )


def test_backend_plugin_interface() -> None:
    register_backend("echo", _EchoBackend)
    result = Sandbox(backend="echo").run(["say", "hi"])
    assert result.stdout == "hi" and result.backend == "echo" and _EchoBackend.calls == [["say", "hi"]]
    with pytest.raises(UserError, match="available: bwrap, runsc, echo"):
        Sandbox(backend="nope")
    register_backend("broken", lambda: object())  # type: ignore[arg-type,return-value]
    with pytest.raises(UserError, match="not a SandboxBackend"):
        Sandbox(backend="broken")


def test_journaled_in_a_run_and_not_run_again_after_a_crash(store_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(
        {
            "WFLO_DATABASE_URL": store_url,
            "WFLO_LEASE_SECONDS": "1",
            "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        }
    )
    crashed = subprocess.run([sys.executable, str(HERE / "sbxapp.py"), "sbx-1"], env={**env, "SBX_CRASH": "1"},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    time.sleep(1.2)  # the dead process's lease runs out
    resumed = subprocess.run(
        [sys.executable, str(HERE / "sbxapp.py"), "sbx-1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == "42 done"

    _config.configure(database=store_url)
    events = list(_config.get_store().events("sbx-1"))
    completed = [e.data for e in events if e.type == "call.completed" and e.data["kind"] == "sandbox"]
    assert [c["call"] for c in completed] == ["1", "2"], "finished sandboxed code ran again after the resume"
    starts = [e.seq for e in events if e.type in ("run.started", "run.resumed")]
    first_done = next(e.seq for e in events if e.type == "call.completed" and e.data["call"] == "1")
    assert len(starts) == 2 and starts[0] < first_done < starts[1], "call 1 was journaled by the first (killed) process"
    first = completed[0]["sandbox"]
    assert first["exit_code"] == 0 and first["killed_by"] is None and first["stdout_bytes"] == 3
    assert len(first["code_sha256"]) == 64 and completed[0]["limits"]["wall"] == 5.0


def test_runsc_backend_runs_code_in_gvisor() -> None:
    if shutil.which("runsc") is None:
        if os.environ.get("CI"):
            pytest.fail("runsc (Debian package runsc) is required in CI")
        pytest.skip("gVisor's runsc is not installed (apt-get install runsc)")
    box = Sandbox(backend="runsc", wall="10s", files={"/work/in.txt": "in"})
    result = box.run_python(
        "import os\nprint(os.getuid(), open('in.txt').read(), os.path.exists('/etc/shadow'), 'WFLO' in str(os.environ))\n"
        "open('out.txt', 'w').write('out')"
    )
    assert result.ok, result.stderr
    assert result.stdout == "65534 in False False\n" and result.backend == "runsc"
    assert result.files["/work/out.txt"] == b"out"
    net = box.run_python("import socket; socket.create_connection(('127.0.0.1', 5432), 1); print('ESCAPED')")
    assert "ESCAPED" not in net.stdout and net.exit_code != 0
    slow = Sandbox(backend="runsc", wall="2s").run_python("import time; time.sleep(30)")
    assert slow.killed_by == "timeout"
    with pytest.raises(UserError, match="no network"):
        Sandbox(backend="runsc", network=["example.com:443"]).run_python("pass")


def test_wflo_exports_sandbox() -> None:
    assert wflo.Sandbox is Sandbox


def test_nothing_left_behind_after_the_process_exits() -> None:
    """Scratch directories and cgroups are removed (some off the caller's path) before exit."""
    tmp_path = Path(tempfile.mkdtemp(prefix="wflo-test-"))
    tmp_path.chmod(0o711)  # the sandbox's uid (as root, one of its own) must reach its scratch under it
    code = (
        "import wflo\n"
        "from wflo.sandbox import _cgroup\n"
        "made = []\n"
        "create = _cgroup.CGroup.create.__func__\n"
        "def spy(cls, *a, **k):\n"
        "    group = create(cls, *a, **k)\n"
        "    made.extend(str(d) for d in (group.dirs.values() if group else []))\n"
        "    return group\n"
        "_cgroup.CGroup.create = classmethod(spy)\n"
        "box = wflo.Sandbox()\n"
        "for i in range(5):\n"
        '    assert box.run_python(f\'open("f{i}", "w").write("x")\').ok\n'
        "print('\\n'.join(sorted(set(made))))\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == [], "a scratch directory outlived the process"
    tmp_path.rmdir()
    groups = [Path(line) for line in done.stdout.split()]
    assert groups or not CGroup.available(), "no cgroups were made where the host allows them"
    assert [g for g in groups if g.exists()] == [], "a sandbox cgroup outlived the process"


def test_a_host_without_bubblewrap_gets_a_clear_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a silent weaker run: no bwrap, no sandbox, and the error says what to install."""
    from wflo._errors import SandboxUnavailableError
    from wflo.sandbox import _bwrap, _sandbox

    monkeypatch.setattr(_sandbox, "_backends", {})
    monkeypatch.setattr(_bwrap.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap"):
        Sandbox()


def test_runs_from_a_process_with_many_open_files() -> None:
    """A worker holds connections, sockets and files: more descriptors than the sandbox may
    open. The limit must not stop the supervisor's own set-up in the child before exec."""
    held = [open(os.devnull) for _ in range(200)]  # noqa: SIM115
    try:
        result = Sandbox(wall="10s").run_python("print('ok')")
    finally:
        for fh in held:
            fh.close()
    assert result.ok and result.stdout == "ok\n", result.stderr


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"/work/a.bin": 5}, r"sandbox file '/work/a\.bin' must be given as text or bytes, got int"),  # was 5 NUL bytes
        ({"/work/a.txt": None}, r"must be given as text or bytes, got NoneType"),
        ({"data.csv": "x"}, r"sandbox files go under /work/, got 'data\.csv'"),  # refused at the first run before
        ({"/work/../etc/x": "x"}, r"sandbox files go under /work/"),
        ({5: "x"}, r"sandbox files go under /work/, got 5"),
        ({"/work/a\x00": "x"}, r"sandbox files go under /work/"),
    ],
)
def test_bad_files_are_refused_when_the_sandbox_is_built(files: dict[object, object], says: str) -> None:
    with pytest.raises(UserError, match=says):
        Sandbox(files=files)  # type: ignore[arg-type]
