"""The kill -9 and restart loop the crash tests share; each test says only WHEN to kill.

A test runs its app as a fresh subprocess, up to ``kills_wanted`` times waits with its
``wait_before_kill`` callable and then SIGKILLs the process if it is still alive, and finally lets
one attempt run to its end, returning that attempt's printed output and how many kills landed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).parent


def chaos_env(url: str) -> dict[str, str]:
    """The app's environment: only this store, short leases, a fast poll, the chaos apps importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({
        "WFLO_DATABASE_URL": url, "WFLO_LEASE_SECONDS": "2", "WFLO_POLL_INTERVAL": "0.05",
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
    })  # fmt: skip
    return env


def count_effects(path: Path) -> tuple[Counter[int], Counter[int]]:
    """How many times each step's side effect started and finished, from the apps' effects log."""
    starts: Counter[int] = Counter()
    ends: Counter[int] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            kind, i, _pid = line.split()
            (starts if kind == "start" else ends)[int(i)] += 1
    return starts, ends


def effect_lines(path: Path) -> int:
    """How many lines the effects log has (each step's start and end add one)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_then_finish(
    argv: Sequence[str],
    env: dict[str, str],
    *,
    wait_before_kill: Callable[[subprocess.Popen[str]], None],
    kills_wanted: int,
) -> tuple[int, int]:
    """Start ``argv`` ``kills_wanted`` times, SIGKILL each once ``wait_before_kill`` returns; then finish.

    ``wait_before_kill`` is handed the running process and returns when it is time to kill it
    (it may return early once the process has exited on its own: such an attempt counts as no
    kill). Returns the finishing attempt's last printed line as an int, and the kills that landed.
    """
    kills = 0
    for _ in range(kills_wanted):
        proc = subprocess.Popen(list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_before_kill(proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGKILL), err
    proc = subprocess.Popen(list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return int(out.strip().splitlines()[-1]), kills
