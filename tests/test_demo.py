"""`wflo demo` is the README's first command: it must run on a fresh store and every promise hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


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


def test_demo_runs_on_the_core_install_and_reports_a_missing_sandbox(tmp_path: Path) -> None:
    """The README's first command on a fresh machine: no ``openai``/``anthropic`` SDK (the core
    install has neither) and no bubblewrap on PATH. The demo still exits 0; the sandbox
    promise is reported as not shown, with the command that fixes it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env["PATH"] = str(Path(sys.executable).parent)  # the venv's bin: python, no bwrap
    assert not (Path(sys.executable).parent / "bwrap").exists()
    code = (
        "import sys\n"
        "for name in ('openai', 'anthropic', 'tiktoken'):\n"
        "    sys.modules[name] = None  # importing them now fails, as on a core install\n"
        "from wflo.cli import main\n"
        "sys.argv = ['wflo', 'demo', '--dir', sys.argv[1]]\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "BROKEN:" not in out.replace("BROKEN at seq", "")
    assert "not shown: sandbox backend 'bwrap' cannot run here: bubblewrap is not installed" in out
    assert "to see it: apt-get install bubblewrap" in out
    for scene in ("budget", "loop", "approval", "crash", "audit"):
        assert f" {scene} " in out and "NO " not in out


def test_a_broken_scene_says_why_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from io import StringIO

    from rich.console import Console

    from wflo.demo._run import Demo

    monkeypatch.setenv("WFLO_DEMO_LLM", "")  # the demo sets these two; restored after the test
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:demo-agent-owner")
    buf = StringIO()
    demo = Demo(tmp_path, auto_approve=True, console=Console(file=buf, width=200), quiet=False)
    try:
        demo.held("budget", False, error="ModuleNotFoundError: No module named 'openai'")
        demo.held("loop", False)
    finally:
        demo.close()
    lines = buf.getvalue().splitlines()
    assert "  → BROKEN: ModuleNotFoundError: No module named 'openai'" in lines
    assert "  → BROKEN: the checks above did not pass" in lines
    assert demo.results["budget"]["why"].startswith("ModuleNotFoundError")
