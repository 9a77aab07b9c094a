"""Dates given on the command line, turned into the store's fixed-width UTC text form."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .._errors import UserError
from ..store import iso

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, *, option: str = "date") -> str:
    """``YYYY-MM-DD``, an ISO 8601 time (UTC unless it names a zone), or an age like ``30d``.

    Returns the store's form (``2026-01-02T03:04:05.000000Z``) so it compares as text with
    events' ``at``. Raises ``UserError`` with one line that says what is accepted.
    """
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        try:
            moment = datetime.now(UTC) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise UserError(f"invalid {option} {text!r}: that age reaches back before the year 1") from None
        return iso(moment)
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise UserError(
            f"invalid {option} {text!r}: use YYYY-MM-DD, an ISO 8601 time (2026-01-31T12:00:00Z) or an age (30d, 12h)"
        ) from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return iso(moment)
