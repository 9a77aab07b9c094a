"""The ``wflo`` command as a process, as a user's shell runs it: Ctrl-C at any moment (while it
still imports, too), a reader that goes away (``wflo runs list | head -1``). Each ends with the
status docs/cli.md documents, without a traceback."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wflo.store import open_store

HERE = Path(__file__).parent
INTERRUPTED, OUTPUT_CLOSED = 130, 141  # the table at the end of docs/cli.md
SLEEPY = (
    "import time\nimport wflo\n\n\n@wflo.step\ndef nap(s: float) -> float:\n    time.sleep(s)\n    return s\n\n\n"
    "@wflo.workflow(name='sleepy')\ndef sleepy(s: float) -> float:\n    return nap(s)\n"
)


def _env(db: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(WFLO_DATABASE_URL=db, WFLO_PRINCIPAL="user:ops", PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    return env


def wflo(*args: str, db: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wflo", *args], cwd=cwd, env=_env(db), capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def interpreter_start() -> float:
    """How long this machine takes to start a bare interpreter: a Ctrl-C before that reaches
    CPython's own start-up, which no code of wflo's has run yet to answer."""
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.monotonic() - t0)
    return max(times)


@pytest.mark.parametrize("after", [0.03, 0.08, 0.15, 0.25, 0.4, 0.6, 1.0])
def test_ctrl_c_at_any_moment_ends_quietly_with_130(
    after: float, interpreter_start: float, sqlite_url: str, tmp_path: Path
) -> None:
    """From the imports (the first half second) to the running workflow, one answer: status
    130 and no traceback (it was a traceback of whichever import the Ctrl-C reached)."""
    (tmp_path / "sleepyapp.py").write_text(SLEEPY)
    open_store(sqlite_url).close()
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "wflo", "run", "sleepyapp:sleepy", "--input", "[30]"],
            cwd=tmp_path, env=_env(sqlite_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(interpreter_start + after)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        if not _in_cpython_start_up(err):
            break
        # A loaded machine started this one slower than the bare interpreter measured: the
        # Ctrl-C reached CPython's own start-up (runpy's imports), before any of wflo's code.
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert proc.returncode == INTERRUPTED, (proc.returncode, out, err)


def _in_cpython_start_up(err: str) -> bool:
    """A KeyboardInterrupt whose traceback holds only CPython's frozen bootstrap frames (as
    "Could not import runpy module"): no file of wflo's, or of anyone's, had run yet."""
    frames = [line for line in err.splitlines() if line.lstrip().startswith('File "')]
    return "KeyboardInterrupt" in err and bool(frames) and all('File "<frozen ' in f for f in frames)


@pytest.fixture
def many_runs(sqlite_url: str, tmp_path: Path) -> Iterator[str]:
    """A store with more rows than a pipe holds (64 KiB), so every listing below writes into a
    pipe whose reader is gone."""
    open_store(sqlite_url).close()
    with open_store(sqlite_url) as store:
        for i in range(1000):
            store.create_run(run_id=f"r{i:04d}-{'x' * 40}", workflow="greet", input={"i": i}, owner="w1")
    yield sqlite_url


LISTINGS = [
    ["runs", "list", "--limit", "1000"],
    ["runs", "list", "--limit", "1000", "--json"],
    ["runs", "show", "r0001"],
    ["runs", "show", "r0001", "--json"],
    ["audit", "verify", "--no-spend-book"],
    ["audit", "verify", "--no-spend-book", "--json"],
    ["costs"],
    ["db", "check"],
    ["--help"],
]


def _cut_off(args: list[str], db: str, cwd: Path, *, read_a_line: bool) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wflo", *args], cwd=cwd, env=_env(db), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    if read_a_line:
        assert proc.stdout.readline()
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    return proc.wait(timeout=60), err


@pytest.mark.parametrize("args", LISTINGS, ids=" ".join)
def test_a_reader_that_is_gone_ends_every_command_the_same_way(args: list[str], many_runs: str, tmp_path: Path) -> None:
    """It was 1 for some commands (rich's and click's answer), 130 for others (as if Ctrl-C),
    with "Exception ignored" at exit for output still buffered; now 141 for all (128 + SIGPIPE:
    what the shell reports for any program a closed pipe ends), and nothing on stderr."""
    assert _cut_off(args, many_runs, tmp_path, read_a_line=False) == (OUTPUT_CLOSED, "")


@pytest.mark.parametrize("args", [["runs", "list", "--limit", "1000"], ["runs", "list", "--limit", "1000", "--json"]])
def test_head_1_of_a_long_listing_is_the_same_closed_pipe(args: list[str], many_runs: str, tmp_path: Path) -> None:
    """``wflo runs list | head -1``: the reader leaves in the middle of a write, which CPython's
    stdout reports as done (the rest dropped, status 0); the pipe itself says its reader left."""
    assert _cut_off(args, many_runs, tmp_path, read_a_line=True) == (OUTPUT_CLOSED, "")


def test_audit_verify_says_broken_once_per_line(sqlite_url: str, tmp_path: Path) -> None:
    """The line of a broken chain said "BROKEN r2: BROKEN at seq …"."""
    (tmp_path / "sleepyapp.py").write_text(SLEEPY)
    open_store(sqlite_url).close()
    for run_id in ("r1", "r2"):
        assert (
            wflo("run", "sleepyapp:sleepy", "--input", "[0]", "--id", run_id, db=sqlite_url, cwd=tmp_path).returncode
            == 0
        )
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:  # a DBA edits a recorded event
        db.execute(
            """UPDATE events SET data = replace(data, '"output":0', '"output":7') WHERE chain = 'r2' AND seq = 3"""
        )
    verify = wflo("audit", "verify", "--no-spend-book", db=sqlite_url, cwd=tmp_path)
    assert verify.returncode == 10, verify.stderr
    [line] = verify.stderr.splitlines()
    assert line.startswith("BROKEN r2: at seq 3 (hash): expected ") and line.count("BROKEN") == 1, line
    assert verify.stdout.startswith("broken: 2 chains, "), verify.stdout
