"""P3 for gathered async tasks: SIGKILL a run whose tasks reached their second calls in one
order, resume it in a fresh process where they reach them in another; every task must get its
own recorded result, and no finished call may run again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _killloop import chaos_env

from wflo import _config
from wflo.audit import verify_chain

APP = Path(__file__).parent / "gatherapp.py"
TASKS = 5


def _effects(path: Path) -> Counter[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.rsplit(" ", 1)[0] for line in lines)


@pytest.mark.slow
def test_sigkill_gathered_tasks_then_resume_in_another_order(store_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    env = chaos_env(store_url)
    argv = [sys.executable, str(APP), "gather-crash", str(effects)]
    proc = subprocess.Popen([*argv, "record"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not all(_effects(effects)[f"recorded {i}"] for i in range(1, TASKS)):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the tasks never recorded their second calls"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # task 0 is still in first(0)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    _config.configure(database=store_url)
    store = _config.get_store()
    events = store.events("gather-crash")
    seconds = [e.data for e in events if e.type == "call.completed" and e.data["name"] == "gatherapp.second"]
    assert [(d["call"], d["input"]["args"][0]) for d in seconds] == [("6", 4), ("7", 3), ("8", 2), ("9", 1)]

    done = subprocess.run([*argv, "resume"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [f"{i}:{100 + i}" for i in range(TASKS)]
    ran = _effects(effects)
    assert ran["first 0"] == 2 and all(ran[f"first {i}"] == 1 for i in range(1, TASKS))
    assert all(ran[f"second {i}"] == 1 for i in range(TASKS)), f"a finished call ran again: {ran}"

    assert store.get_run("gather-crash").status == "succeeded"
    calls = [e.data["call"] for e in store.events("gather-crash") if e.type == "call.completed"]
    assert len(calls) == len(set(calls)) == 2 * TASKS
    assert verify_chain(store, "gather-crash").ok
