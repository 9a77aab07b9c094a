"""wflo.guards: the pure modules stay pure (public names: tests/test_public_api.py)."""

from __future__ import annotations

import wflo
import wflo.guards


def test_the_top_level_loop_guard_is_the_guards_one() -> None:
    # The names are pinned for every package in tests/test_public_api.py.
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
