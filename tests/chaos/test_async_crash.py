"""P3 for async workflows: SIGKILL an async run at random points, then resume it.

The run's store work happens on the store's threads while its steps run on the loop
(``Store.off_loop``): a kill can land in either, and the resumed run must still journal each
step exactly once, in order, on an intact chain.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_crash import _effects, _env

from wflo import _config
from wflo.audit import verify_chain

HERE = Path(__file__).parent
APP = HERE / "acrashapp.py"
STEPS = 30
EXPECTED = sum(i * i for i in range(STEPS))


@pytest.mark.slow
def test_sigkill_async_run_at_random_points_then_resume(store_url: str, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("WFLO_CHAOS_SEED", "4321")))
    effects = tmp_path / "effects.log"
    env = _env(store_url)
    kills = 0
    finished = None
    for attempt in range(30):
        proc = subprocess.Popen(
            [sys.executable, str(APP), "async-chaos", str(effects), str(STEPS)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if attempt < 8:
            started = len(effects.read_text().splitlines()) if effects.exists() else 0
            # Kill once this attempt has run a few more steps (or after a while, wherever it is).
            for _ in range(int(rng.uniform(20, 60))):
                try:
                    proc.wait(timeout=0.02)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = len(effects.read_text().splitlines()) if effects.exists() else 0
                if now - started >= rng.randint(2, 8):
                    break
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            _, err = proc.communicate(timeout=30)
            assert proc.returncode in (0, -signal.SIGKILL), err
            continue
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        finished = int(out.strip().splitlines()[-1])
        break
    assert finished == EXPECTED
    assert kills >= 4, "the kills all landed after the run finished"

    _config.configure(database=store_url)
    store = _config.get_store()
    run = store.get_run("async-chaos")
    assert run.status == "succeeded" and run.output == EXPECTED
    events = store.events("async-chaos")
    completed = [e.data["call"] for e in events if e.type == "call.completed"]
    assert completed == [str(i + 1) for i in range(STEPS)], "steps journaled out of order or twice"
    assert verify_chain(store, "async-chaos").ok

    starts, ends = _effects(effects)
    assert set(range(STEPS)) <= set(ends)
    # A step re-runs only if it was in flight when a kill landed: at most one extra run per kill.
    assert sum(n - 1 for n in starts.values()) <= kills, (starts, kills)
    assert Counter(ends)  # each step's effect finished at least once
