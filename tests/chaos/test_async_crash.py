"""P3 for async workflows: SIGKILL an async run at random points, then resume it.

The run's store work happens on the store's threads while its steps run on the loop
(``Store.off_loop``): a kill can land in either, and the resumed run must still journal each
step exactly once, in order, on an intact chain.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from _killloop import chaos_env, count_effects, effect_lines, kill_then_finish

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
    env = chaos_env(store_url)

    def wait_before_kill(proc: subprocess.Popen[str]) -> None:
        # Kill once this attempt has run a few more steps (or after a while, wherever it is).
        started = effect_lines(effects)
        for _ in range(int(rng.uniform(20, 60))):
            try:
                proc.wait(timeout=0.02)
                return
            except subprocess.TimeoutExpired:
                pass
            now = effect_lines(effects)
            if now - started >= rng.randint(2, 8):
                return

    finished, kills = kill_then_finish(
        [sys.executable, str(APP), "async-chaos", str(effects), str(STEPS)], env,
        wait_before_kill=wait_before_kill, kills_wanted=8,
    )  # fmt: skip
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

    starts, ends = count_effects(effects)
    assert set(range(STEPS)) <= set(ends)
    # A step re-runs only if it was in flight when a kill landed: at most one extra run per kill.
    assert sum(n - 1 for n in starts.values()) <= kills, (starts, kills)
    assert Counter(ends)  # each step's effect finished at least once
