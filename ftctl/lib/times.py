"""Times: timestamps as sources deliver them -> aware datetimes, and the time records carry
(one definition of each for the core and plugins)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ftctl.records import RowError


def now() -> str:
    """The current UTC time in whole seconds, ISO 8601: what models.lock, history and logs record."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def parse_time(value: Any) -> datetime | None:
    """Timestamps arrive as datetimes, ISO strings, other date formats or epoch seconds.

    Naive times are taken as UTC so that every watermark compares.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime) and value.tzinfo is not None:  # the common case, first
        return value
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, bool):
        raise RowError("bad_timestamp", repr(value))
    elif isinstance(value, (int, float)):
        try:
            dt = datetime.fromtimestamp(float(value) / (1000 if value > 1e11 else 1), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise RowError("bad_timestamp", repr(value)) from None
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            from dateutil import parser

            try:
                dt = parser.parse(value)
            except (ValueError, OverflowError):
                raise RowError("bad_timestamp", value[:80]) from None
    else:
        raise RowError("bad_timestamp", f"{type(value).__name__}")
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
