"""`wflo demo` is the README's first command: it must run on a fresh store and every promise hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_holds_every_promise(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    proc = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "demo", "--auto-approve", "--json", "--dir", str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["held"] is True
    assert set(report["promises"]) == {"budget", "loop", "approval", "crash", "sandbox", "audit"}
    assert report["promises"]["sandbox"]["refused"] == 4
    assert report["promises"]["crash"]["requests"] == 3
    assert report["promises"]["audit"]["tamper_detected_at"] is not None
    # The demo's store is left for inspection and passes the CLI's own verification.
    db = f"sqlite:///{tmp_path / 'demo' / 'wflo.db'}"
    verify = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "-d", db, "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0 and "intact" in verify.stdout
    tampered = f"sqlite:///{tmp_path / 'demo' / 'tampered.db'}"
    broken = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "-d", tampered, "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert broken.returncode == 10 and "BROKEN" in broken.stderr
