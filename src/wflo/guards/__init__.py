"""Runaway protection: loop detectors and caps on the stream of guarded calls (promise P2)."""

from ._guard import LoopGuardGuard
from ._loop import LoopGuard, LoopState, Signature, parse_rate

__all__ = ["LoopGuard", "LoopGuardGuard", "LoopState", "Signature", "parse_rate"]
