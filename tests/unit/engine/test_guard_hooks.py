"""A call runs each guard's hooks as the chain says, though only the guards that act in a hook
are called for it (issue 20, `sqlcpu`: ``_boundary._hooks``). Regression pins: they pass on
the code before that too."""

from __future__ import annotations

from typing import Any

import pytest

import wflo
from wflo.engine import Guard, add_guard_factory
from wflo.engine._executor import _guard_factories


class Seen(Guard):
    def __init__(self, name: str, log: list[str], refuse: bool = False) -> None:
        self.name, self.log, self.refuse = name, log, refuse

    def before(self, call: Any) -> None:
        self.log.append(f"before {self.name}")
        if self.refuse:
            raise wflo.errors.UserError(f"refused by {self.name}")

    def after(self, call: Any, outcome: Any) -> None:
        self.log.append(f"after {self.name}")

    def recorded(self, call: Any, outcome: Any) -> None:
        self.log.append(f"recorded {self.name}")


class Quiet(Guard):
    """Acts in no hook of its class; one guard is given a ``before`` of its own."""


def _with(guards: Any, flow: Any, run_id: str) -> Any:
    def factory(wf: Any, record: Any) -> list[Guard]:
        return list(guards)

    add_guard_factory(factory)
    try:
        return flow.options(id=run_id).run()
    finally:
        _guard_factories.remove(factory)


def test_hooks_run_in_order_and_a_refusal_is_seen_by_the_guards_before_it(configured: str) -> None:
    log: list[str] = []
    own = Quiet()
    own.before = lambda call: log.append("before own")  # type: ignore[method-assign]

    @wflo.step
    def one() -> int:
        return 1

    @wflo.workflow
    def flow() -> int:
        return one()

    guards = [Seen("a", log), Quiet(), own, Seen("b", log)]
    assert _with(guards, flow, "gh-1") == 1
    assert log == ["before a", "before own", "before b", "after b", "after a", "recorded a", "recorded b"]

    log.clear()
    guards = [Seen("a", log), own, Seen("b", log, refuse=True), Seen("c", log)]
    with pytest.raises(wflo.errors.UserError, match="refused by b"):
        _with(guards, flow, "gh-2")
    # b refused: a let it in (its after runs), c was never asked; the refusal is recorded.
    assert log == ["before a", "before own", "before b", "after a", "recorded a", "recorded b", "recorded c"]
