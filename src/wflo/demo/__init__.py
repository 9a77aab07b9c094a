"""``wflo demo``: the promises, shown on a scripted research agent."""

from ._run import run_demo

__all__ = ["run_demo"]
