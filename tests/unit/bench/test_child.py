"""bench/_common.py's ``Child``: one side of a benchmark in a process of its own."""

from __future__ import annotations

import itertools
import sqlite3
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

from _common import Child, alternate_timed  # noqa: E402


def test_a_child_runs_its_cases_in_its_own_process_and_times_them_there(tmp_path: Path) -> None:
    db = tmp_path / "raw.db"
    with Child("engine:raw_cases", f"sqlite:///{db}") as child:
        assert child.names == ["raw commit", "raw commits"]
        assert child.skipped is None
        commit = child.case("raw commit")
        times = [commit() for _ in range(3)]
    assert all(t > 0 for t in times)
    # the commits were made by the child, on its own connection
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (3,)
    finally:
        conn.close()


def test_a_side_without_cases_says_why(tmp_path: Path) -> None:
    (tmp_path / "peer_missing.py").write_text("def cases(why):\n    return why\n")
    with Child("peer_missing:cases", "peer not installed", pythonpath=str(tmp_path)) as child:
        assert child.skipped == "peer not installed"
        assert child.names == []
        assert child.cases() == {}


def test_a_child_that_dies_is_an_error_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "peer_dies.py").write_text("import os\ndef cases():\n    return {'die': lambda: os._exit(3)}\n")
    with (
        Child("peer_dies:cases", pythonpath=str(tmp_path)) as child,
        pytest.raises(RuntimeError, match="exited with 3"),
    ):
        child.case("die")()


def test_alternate_timed_takes_each_cases_own_figure() -> None:
    rounds = alternate_timed({"a": lambda: 1.0, "b": lambda: 2.0}, iterations=4, rounds=2, warm=1)
    assert rounds == [{"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}]


# The engine benchmark's sides as a run with DBOS installed names them (one list per process).
ENGINE_SIDES = [
    ["raw commit", "raw commits"],
    ["wflo empty", "wflo steps", "wflo async empty", "wflo async steps"],
    ["DBOS empty", "DBOS steps"],
]


def test_with_sides_no_case_follows_a_case_of_its_own_process() -> None:
    """A case that follows its own process's case skips the wake-up (of the process and its
    database connection) that a case after another process pays, about a commit's time. The
    plain rotation put ``wflo async empty`` always after ``wflo steps`` (its own process) and
    ``wflo empty`` always after the raw commit's process: the async empty run read ~200 µs
    faster than the sync one on PostgreSQL for that alone (sweep-pgempty, 2026-12-01)."""
    side_of = {name: k for k, names in enumerate(ENGINE_SIDES) for name in names}
    ran: list[str] = []
    cases = {name: (lambda name=name: ran.append(name) or 1.0) for name in side_of}
    rounds = alternate_timed(cases, iterations=16, rounds=2, warm=3, sides=ENGINE_SIDES)
    assert len(rounds) == 2 and all(set(r) == set(side_of) for r in rounds)
    assert len(ran) == (3 + 2 * 16) * len(side_of)
    same = [(a, b) for a, b in itertools.pairwise(ran) if side_of[a] == side_of[b]]
    assert same == []
    # Every case runs once per iteration, and takes each of its process's places in turn.
    per_iteration = [ran[i : i + len(side_of)] for i in range(0, len(ran), len(side_of))]
    assert all(sorted(it) == sorted(side_of) for it in per_iteration)
    places = {name: {it.index(name) for it in per_iteration} for name in side_of}
    assert places["wflo empty"] == places["wflo async empty"] == places["wflo steps"]
    assert places["raw commit"] == places["raw commits"] and places["DBOS empty"] == places["DBOS steps"]
