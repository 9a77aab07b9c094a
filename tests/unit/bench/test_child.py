"""bench/_common.py's ``Child``: one side of a benchmark in a process of its own."""

from __future__ import annotations

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
