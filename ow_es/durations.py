"""Durations as users write them: ``"500ms"``, ``"30s"``, ``"10m"``, a timedelta, seconds."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

Duration = str | int | float | timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
MAX_SECONDS = 10 * 365 * 86400.0  # ten years: longer is a mistake, not a plan


def to_seconds(value: Duration, what: str = "duration") -> float:
    """Seconds of a duration; a clear ``ValueError`` naming ``what`` for anything else."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration like '30s', got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(
                f"{what}: {value!r} is not a duration (use e.g. '500ms', '30s', '10m', '2h', '1d')"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"{what}: expected a duration like '30s', got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"{what}: must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError(f"{what}: must not be negative, got {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{what}: {value!r} is longer than ten years")
    return seconds


def to_timedelta(value: Duration, what: str = "duration") -> timedelta:
    return timedelta(seconds=to_seconds(value, what))


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_datetime(value: datetime | Duration, what: str = "time") -> datetime:
    """An aware datetime, or a duration from now (``available_at="5m"``)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{what}: datetime must be timezone-aware, got {value!r}")
        return value.astimezone(UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return utcnow() + to_timedelta(value, what)
        if parsed.tzinfo is None:
            raise ValueError(f"{what}: {value!r} has no timezone")
        return parsed.astimezone(UTC)
    return utcnow() + to_timedelta(value, what)
