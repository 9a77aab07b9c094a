"""The demo's budget, loop and approval scenes, run for real (scripted LLM, real SDK), as a
store for the tests of what is built from a store (the report, compliance packs)."""

from __future__ import annotations

from pathlib import Path

import pytest


def run_demo_scenes(directory: Path) -> str:
    """Run the three scenes into a fresh store under ``directory``; return its URL."""
    from rich.console import Console

    from wflo.demo._run import Demo

    mp = pytest.MonkeyPatch()
    mp.setenv("WFLO_DEMO_LLM", "")
    mp.setenv("WFLO_PRINCIPAL", "user:demo-agent-owner")
    demo = Demo(directory, auto_approve=True, console=Console(quiet=True), quiet=True)
    try:
        demo.budget()
        demo.loop()
        demo.approval()
        assert all(r["held"] for r in demo.results.values()), demo.results
    finally:
        demo.close()
        mp.undo()
    return demo.url
