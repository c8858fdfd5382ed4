"""Cron schedules: the definition (``Schedule``), what a run gets (``Tick``), and the tick
computation, pure functions of the cron, the zone and "now" (``cronsim`` parses the cron and
walks local time, so ``0 3 * * *`` stays at 03:00 local across DST changes)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from ow_es.errors import ValidationError

Overlap = Literal["skip", "allow"]
CatchUp = Literal["latest", "all", "none"]
MAX_CATCH_UP = 1000  # catch_up="all" starts at most this many missed ticks at once


class Tick(msgspec.Struct, frozen=True):
    """The input of a scheduled run whose input annotation is ``Tick``."""

    scheduled_at: datetime  # aware, UTC
    schedule: str


class ScheduleInfo(msgspec.Struct, kw_only=True):
    """A stored schedule as ``ow.schedules()`` lists it, with its last run's status."""

    name: str
    workflow_name: str
    version: str | None
    cron: str
    timezone: str
    overlap: str
    catch_up: str
    next_tick_at: datetime
    paused: bool
    last_run_id: str | None
    last_run_status: str | None


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValidationError(f"timezone: unknown IANA time zone {timezone!r}") from None


def check_cron(cron: str) -> str:
    """``cron`` with five fields, or six with seconds first; raises ValidationError."""
    if not isinstance(cron, str) or len(cron.split()) not in (5, 6):
        raise ValidationError(f"cron: {cron!r} needs five fields (or six, seconds first)")
    try:
        CronSim(cron, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValidationError(f"cron: {cron!r} is invalid: {exc}") from None
    return cron


@dataclass(frozen=True)
class Schedule:
    """When a workflow runs by itself: ``@ow.workflow(..., schedule=Schedule("0 3 * * *"))``."""

    cron: str
    timezone: str = "UTC"
    overlap: Overlap = "skip"
    catch_up: CatchUp = "latest"
    input: Any = None

    def __post_init__(self) -> None:
        check_cron(self.cron)
        _zone(self.timezone)
        if self.overlap not in get_args(Overlap):
            raise ValidationError(f"overlap: {self.overlap!r} is not one of skip, allow")
        if self.catch_up not in get_args(CatchUp):
            raise ValidationError(f"catch_up: {self.catch_up!r} is not one of latest, all, none")


def next_tick(cron: str, timezone: str, after: datetime) -> datetime:
    """The first tick strictly after ``after`` (aware), in UTC."""
    local = after.astimezone(_zone(timezone))
    return next(iter(CronSim(cron, local))).astimezone(UTC)


@dataclass(frozen=True)
class Due:
    """What a due schedule fires now: ``ticks`` (oldest first) and its next tick after."""

    ticks: list[datetime]
    next_tick_at: datetime


def due_ticks(
    cron: str,
    timezone: str,
    catch_up: str,
    next_tick_at: datetime,
    now: datetime,
    grace: float = 60.0,
) -> Due | None:
    """The ticks to fire at ``now`` for a schedule whose next tick is ``next_tick_at``, by the
    catch-up policy; None when it is not due yet. Of the due ticks (``next_tick_at`` up to
    ``now``), "all" fires every one (the newest ``MAX_CATCH_UP``), "latest" the newest, and
    "none" the newest only if it is no older than ``grace`` seconds (on time, not missed)."""
    if next_tick_at > now:
        return None
    zone = _zone(timezone)
    after = next_tick(cron, timezone, now)
    back = CronSim(cron, (now + timedelta(microseconds=1)).astimezone(zone), reverse=True)
    due: list[datetime] = []
    for local in back:  # newest first; the walk is bounded, however long the downtime
        tick = local.astimezone(UTC)
        if tick < next_tick_at or len(due) == (MAX_CATCH_UP if catch_up == "all" else 1):
            break
        due.append(tick)
    if catch_up == "none" and due and (now - due[0]).total_seconds() > grace:
        due = []
    return Due(ticks=due[::-1], next_tick_at=after)


def tick_key(schedule: str, scheduled_at: datetime) -> str:
    """The idempotency key of a tick's run: one run per tick, whoever fires it."""
    return f"schedule:{schedule}:{scheduled_at.astimezone(UTC).isoformat()}"


def tick_input(schedule: str, scheduled_at: datetime, input: Any, takes_tick: bool) -> Any:
    if takes_tick:
        return {"scheduled_at": scheduled_at.astimezone(UTC).isoformat(), "schedule": schedule}
    return input
