"""Loop detectors survive replay: a resumed run continues counting from its journal."""

from __future__ import annotations

import pytest

import wflo
from wflo import _config
from wflo._errors import UserError


def test_resumed_run_continues_counting(configured: str) -> None:
    ran: list[str] = []
    state = {"die_at": 2}

    @wflo.tool
    def ping(host: str) -> str:
        ran.append(host)
        if len(ran) == state["die_at"]:
            state["die_at"] = -1
            raise KeyboardInterrupt  # the process dies during the 2nd call
        return "pong"

    @wflo.workflow(name="pinger", guards=wflo.LoopGuard(max_repeats=3))
    def pinger() -> int:
        n = 0
        for _ in range(10):
            ping("10.0.0.1")
            n += 1
        return n

    with pytest.raises(KeyboardInterrupt):
        pinger.options(id="ping-1").run()
    with pytest.raises(wflo.LoopDetectedError) as info:
        wflo.resume("ping-1")
    # 1 finished call replayed + the interrupted one re-run + 1 more = 3 allowed; the 4th is refused.
    assert info.value.evidence["count"] == 4
    assert ran == ["10.0.0.1"] * 4
    assert _config.get_store().get_run("ping-1").status == "stopped"


def test_guards_false_switches_runaway_protection_off(configured: str) -> None:
    @wflo.tool
    def same() -> str:
        return "x"

    @wflo.workflow(name="unguarded", guards=False)
    def unguarded() -> int:
        for _ in range(50):
            same()
        return 50

    assert unguarded.run() == 50


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_repeats": 0},
        {"max_steps": -1},
        {"max_spend_rate": "lots"},
        {"max_duration": "soon"},
        {"repeat_window": 1},
        {"max_oscillation": True},
    ],
)
def test_bad_options_are_user_errors(kwargs: dict) -> None:
    with pytest.raises(UserError):
        wflo.LoopGuard(**kwargs)
