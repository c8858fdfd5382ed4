"""Flow control a workflow declares: how many of its runs may be held at once, per key, and
how many may start in a sliding period. The database enforces them in the claim."""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from ow_es.durations import to_seconds

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")


class Rate(msgspec.Struct, frozen=True):
    """``count`` first claims in any sliding ``seconds``."""

    count: int
    seconds: float

    @classmethod
    def parse(cls, text: str, what: str = "rate") -> Rate:
        """``"100/1m"`` -> Rate(100, 60.0); a clear ``ValueError`` naming ``what`` otherwise."""
        match = _RATE.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"{what}: {text!r} is not a rate (use N/PERIOD, e.g. '100/1m')")
        count = int(match.group(1))
        period = match.group(2)
        seconds = to_seconds(period if period[0].isdigit() else f"1{period}", what)
        if count < 1 or seconds <= 0:
            raise ValueError(f"{what}: {text!r} must allow at least 1 per a positive period")
        return cls(count, seconds)


def _positive(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}: expected a positive integer, got {value!r}")
    return value


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """``Limits(concurrency=20, per_key=1, rate="100/1m")`` on ``@ow.workflow(limits=...)``.

    ``concurrency``: runs of the workflow held by workers at once; ``per_key``: those held with
    the same ``key``; ``rate`` / ``per_key_rate``: first claims in any sliding period. A parked
    run holds no place."""

    concurrency: int | None = None
    per_key: int | None = None
    rate: str | None = None
    per_key_rate: str | None = None

    def __post_init__(self) -> None:
        _positive(self.concurrency, "concurrency")
        _positive(self.per_key, "per_key")
        if self.rate is not None:
            Rate.parse(self.rate, "rate")
        if self.per_key_rate is not None:
            Rate.parse(self.per_key_rate, "per_key_rate")

    @property
    def rate_limit(self) -> Rate | None:
        return None if self.rate is None else Rate.parse(self.rate)

    @property
    def per_key_rate_limit(self) -> Rate | None:
        return None if self.per_key_rate is None else Rate.parse(self.per_key_rate)

    @property
    def is_empty(self) -> bool:
        return self == Limits()


class StoredLimits(msgspec.Struct, kw_only=True):
    """The limits in force for a workflow, as stored (``ow-es limits list``). ``source``:
    ``"code"`` (written by a worker from ``limits=``) or ``"operator"`` (``ow-es limits set``,
    which a deploy does not overwrite)."""

    workflow_name: str
    limits: Limits
    source: str
    updated_at: datetime
