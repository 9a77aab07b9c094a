"""Budgets set with nonsense are refused with one line naming the fix, never an internal
``ValueError``/``AttributeError``, and nothing reaches the store (sweep of the public API)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import wflo
from wflo import _config


@pytest.mark.parametrize(
    ("alerts", "says"),
    [
        ((float("nan"),), r"whole percentages from 1 to 100, got nan"),  # was ValueError from int()
        (50, r"must be a list of percentages like \(50, 80, 100\), got 50"),  # was TypeError
        ("50", r"must be a list of percentages"),  # was (5, 0): alerts at 0 % and 5 %
        ((0,), r"got 0 in"),  # fired at the first cent
        ((-5, 50), r"got -5 in"),
        ((150,), r"got 150 in"),  # could never fire: a budget holds at 100 %
        ((50.5,), r"got 50\.5 in"),  # was truncated to 50
        ((True,), r"got True in"),
    ],
)
def test_bad_alert_thresholds_are_refused(alerts: Any, says: str) -> None:
    with pytest.raises(wflo.UserError, match=says):
        wflo.Budget(usd="1", alerts=alerts)


def test_good_alert_thresholds_are_sorted_and_distinct() -> None:
    assert wflo.Budget(usd="1", alerts=[100, 50, 50]).alerts == (50, 100)
    assert wflo.Budget(usd="1", alerts=()).alerts == ()


@pytest.fixture
def sqlite_configured(sqlite_url: str) -> Iterator[str]:
    _config.configure(database=sqlite_url)
    yield sqlite_url
    _config.reset()


@pytest.mark.parametrize(
    ("scope", "says"),
    [
        (5, r"budget scope 5 must look like 'tenant:acme'"),  # was AttributeError: 'int' ... 'split'
        (None, r"budget scope None must look like"),
        ("bar", r"'user:NAME', 'run:ID' or 'global'"),  # the kinds it takes, all of them
        ("tenant:a\x00b", r"budget scope must be printable text"),  # psycopg.DataError on PostgreSQL
        ("tenant:acme\u202e", r"budget scope must be printable text"),
        ("tenant:" + "a" * 300, r"budget scope must be at most 255 characters"),
    ],
)
def test_bad_budget_scopes_are_refused(sqlite_configured: str, scope: Any, says: str) -> None:
    with pytest.raises(wflo.UserError, match=says):
        wflo.budgets.set(scope, usd="5")
    assert wflo.budgets.get("tenant:acme") is None


def test_set_refuses_bad_alerts_before_writing(sqlite_configured: str) -> None:
    with pytest.raises(wflo.UserError, match=r"got 200 in"):
        wflo.budgets.set("tenant:acme", usd="5", alerts=[200])
    assert wflo.budgets.get("tenant:acme") is None
    assert wflo.budgets.set("tenant:acme", usd="5", alerts=[90]).alerts == (90,)


@pytest.mark.parametrize("usd", ["1e999999999", "1e-999999999", "1000000000001", 1e-30])
def test_amounts_beyond_reason_are_refused(usd: Any) -> None:
    # "1e999999999" is finite: it was kept, and written out as a billion digits of text in
    # the options of every run of the workflow (20 s and 1 GB each).
    with pytest.raises(wflo.UserError, match=r"Budget\(usd=\.\.\.\) must be 0 or from 1e-18 to 1,000,000,000,000 USD"):
        wflo.Budget(usd=usd)
    with pytest.raises(wflo.UserError, match=r"input_per_mtok must be 0 or from 1e-18"):
        wflo.cost.prices.set("misuse-model", input_per_mtok=usd, output_per_mtok=1)


def test_exact_amounts_within_reason_are_kept() -> None:
    assert wflo.Budget(usd="1000000000000").usd == 10**12
    assert str(wflo.Budget(usd="0.000000000000000001").usd) == "1E-18"
    budget = wflo.Budget(usd="0E-999999999")
    assert budget.usd == 0 and budget.to_run_options()["budget"]["usd"] == "0"
