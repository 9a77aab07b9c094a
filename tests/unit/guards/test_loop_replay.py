"""Loop detectors survive replay: a resumed run continues counting from its journal."""

from __future__ import annotations

import unicodedata
from typing import Any

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


# One call, spelled several ways: each respelling is the same call to the detectors.
RESPELLED = [
    ("otters", {"limit": 1, "lang": "fr"}),
    ("otters", {"lang": "fr", "limit": 1.0}),  # key order, float spelling
    ("otters", '{ "limit" : 1e0,\n "lang": "fr" }'),  # the same object as JSON text
    ("otters", {"limit": 1, "lang": "fr"}),
]


def test_respelled_arguments_are_the_same_call(configured: str) -> None:
    ran: list[Any] = []

    @wflo.tool
    def search(q: str, opts: Any) -> str:
        ran.append(opts)
        return "nothing new"

    @wflo.workflow(name="respeller", guards=wflo.LoopGuard(max_repeats=3, max_oscillation=None))
    def respeller() -> int:
        for q, opts in RESPELLED:
            search(q, opts)
        return len(ran)

    with pytest.raises(wflo.LoopDetectedError) as info:
        respeller.options(id="respell-1").run()
    assert info.value.detector == "max_repeats" and info.value.evidence["count"] == 4
    assert len(ran) == 3

    @wflo.workflow(name="unicode", guards=wflo.LoopGuard(max_repeats=2, max_oscillation=None))
    def unicode_forms() -> int:
        for word in ["café", unicodedata.normalize("NFD", "café"), "café"]:
            search(word, {})
        return len(ran)

    with pytest.raises(wflo.LoopDetectedError) as info:
        unicode_forms.run()
    assert info.value.detector == "max_repeats" and info.value.evidence["count"] == 3


def test_respelled_cycle_is_oscillation(configured: str) -> None:
    @wflo.tool
    def left(n: float) -> str:
        return "l"

    @wflo.tool
    def right(n: float) -> str:
        return "r"

    @wflo.workflow(name="respelled-cycle", guards=wflo.LoopGuard(max_repeats=None, max_oscillation=2))
    def cycle() -> None:
        for i in range(10):
            left(1 if i % 2 else 1.0)
            right(2.0 if i % 2 else 2)

    with pytest.raises(wflo.LoopDetectedError) as info:
        cycle.run()
    assert info.value.detector == "max_oscillation" and info.value.evidence["call"]["seq"] == "5"


def test_a_resumed_run_counts_respelled_calls_it_replays(configured: str) -> None:
    ran: list[Any] = []
    state = {"die_at": 3}

    @wflo.tool
    def lookup(opts: Any) -> str:
        ran.append(opts)
        if len(ran) == state["die_at"]:
            state["die_at"] = -1
            raise KeyboardInterrupt  # the process dies during the 3rd call
        return "same"

    @wflo.workflow(name="respell-resume", guards=wflo.LoopGuard(max_repeats=3, max_oscillation=None))
    def respell() -> int:
        for i in range(10):
            lookup({"n": 1.0} if i % 2 else '{"n": 1}')
        return len(ran)

    with pytest.raises(KeyboardInterrupt):
        respell.options(id="respell-2").run()
    with pytest.raises(wflo.LoopDetectedError) as info:
        wflo.resume("respell-2")
    # 2 replayed + the interrupted one again = 3: the next is the 4th of the same call.
    assert info.value.evidence["count"] == 4 and len(ran) == 4
