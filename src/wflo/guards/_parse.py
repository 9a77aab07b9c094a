"""Durations (``"15m"``) and rates (``"1.00/min"``, ``"60/min"``) as users write them.

Both parsers raise ``UserError`` naming the option and showing an example, so a typo in a
guard's configuration fails when the guard is built, not in the middle of a run.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from .._errors import UserError

__all__ = ["Rate", "parse_duration", "parse_rate"]

_UNITS = {
    "ms": 0.001,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_UNIT = "|".join(sorted(_UNITS, key=len, reverse=True))  # longest first: "min" before "m"
_PART = re.compile(rf"(\d+(?:\.\d+)?)\s*({_UNIT})", re.I)
_DURATION = re.compile(rf"^\s*(?:\d+(?:\.\d+)?\s*(?:{_UNIT})\s*)+$", re.I)
_RATE = re.compile(rf"^\s*\$?\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*({_UNIT})\s*$", re.I)


def parse_duration(value: Any, what: str = "duration") -> float:
    """Seconds from ``30``, ``"90s"``, ``"15m"``, ``"1h"``, ``"1h30m"``, ``"500ms"`` or a ``timedelta``.

    Raises:
        UserError: the value is not a positive duration.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value):
        seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _PART.findall(value))
    else:
        raise UserError(f"{what} must be a duration like 90, '90s', '15m' or '1h', got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{what} must be a positive duration, got {value!r}")
    return seconds


class Rate(NamedTuple):
    """An amount per period: ``parse_rate("1.00/min") == Rate(Decimal("1.00"), 60.0)``."""

    amount: Decimal
    """How much (USD, requests or tokens) the period allows."""
    seconds: float
    """The period, in seconds."""

    @property
    def per_second(self) -> float:
        return float(self.amount) / self.seconds


def parse_rate(value: Any, what: str = "rate") -> Rate:
    """A ``Rate`` from ``"1.00/min"``, ``"$5/hour"``, ``"60/min"``, ``"10/5m"`` or a ``Rate``.

    Raises:
        UserError: the value is not a positive amount per period.
    """
    if isinstance(value, Rate):
        amount, seconds = value
    else:
        match = _RATE.match(value) if isinstance(value, str) else None
        if match is None:
            raise UserError(f"{what} must look like '1.00/min', '5/hour' or '60/min', got {value!r}")
        try:
            amount = Decimal(match.group(1))
        except InvalidOperation as exc:  # the regex admits only digits; kept for safety
            raise UserError(f"{what}: bad amount in {value!r}") from exc
        seconds = float(match.group(2) or 1) * _UNITS[match.group(3).lower()]
    if amount <= 0 or seconds <= 0:
        raise UserError(f"{what} must be positive (use None for no limit), got {value!r}")
    return Rate(amount, seconds)
