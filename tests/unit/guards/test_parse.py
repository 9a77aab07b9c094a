"""Durations and rates as users write them."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from wflo._errors import UserError
from wflo.guards import Rate, parse_duration, parse_rate


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0), (1.5, 1.5), ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("2d", 172800.0),
        ("500ms", 0.5), ("1h30m", 5400.0), ("1.5 hours", 5400.0), ("10 min", 600.0), ("15M", 900.0),
        (timedelta(minutes=2), 120.0),
    ],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "15", "m15", "-5m", "1x", 0, -3, True, None, float("nan"), "15m later"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(UserError, match="max_duration"):
        parse_duration(bad, "max_duration")


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("1.00/min", Rate(Decimal("1.00"), 60.0)), ("5/hour", Rate(Decimal(5), 3600.0)),
        ("$0.50/s", Rate(Decimal("0.50"), 1.0)), ("10/5m", Rate(Decimal(10), 300.0)),
        ("60 / minute", Rate(Decimal(60), 60.0)), ("2/day", Rate(Decimal(2), 86400.0)),
    ],
)  # fmt: skip
def test_rates(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate
    assert parse_rate(rate) == rate


def test_rate_per_second() -> None:
    assert parse_rate("120/min").per_second == 2.0


@pytest.mark.parametrize("bad", ["lots", "1.00", "/min", "1/fortnight", "0/min", "-1/min", 5, None, "1/0m"])
def test_bad_rates(bad: object) -> None:
    with pytest.raises(UserError):
        parse_rate(bad)
