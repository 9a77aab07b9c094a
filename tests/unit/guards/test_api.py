"""wflo.guards' public names are pinned: adding one is a decision, removing one breaks users."""

from __future__ import annotations

import wflo
import wflo.guards

EXPECTED = [
    "CircuitBreaker", "CircuitOpenError", "LoopGuard", "LoopGuardGuard", "LoopState", "Outcome", "Permit", "Policies",
    "PolicyGuard", "Rate", "RateLimitedError", "RateLimiter", "RetryPolicy", "Signature", "Timeout", "Transition", "digest", "is_retryable", "parse_duration", "parse_rate",
    "policies", "retry_after", "timeout",
]  # fmt: skip


def test_all_is_pinned_sorted_and_resolves() -> None:
    assert wflo.guards.__all__ == EXPECTED == sorted(EXPECTED, key=str)
    for name in EXPECTED:
        assert hasattr(wflo.guards, name), name
    assert wflo.LoopGuard is wflo.guards.LoopGuard


def test_pure_modules_do_not_import_the_store_or_the_engine() -> None:
    import ast
    from pathlib import Path

    pkg = Path(wflo.guards.__file__).parent
    for module in ("_loop", "_retry", "_breaker", "_ratelimit", "_parse", "_timeout"):
        tree = ast.parse((pkg / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.module in (None, "_errors", "_parse", "_retry", "_loop"), (module, node.module)
