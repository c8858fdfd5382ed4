"""The port of the ``schedules`` table: each adapter's ``schedules`` module implements
``Schedules`` (coordination state like the worker registry, not projected from the log)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import msgspec

from ow_es.store.port import Primitives


class ScheduleRow(msgspec.Struct, kw_only=True):
    name: str
    workflow_name: str
    version: str | None
    cron: str
    timezone: str
    input: Any = None
    tick: bool = False  # the workflow takes a Tick: that is its input
    overlap: str = "skip"
    catch_up: str = "latest"
    next_tick_at: datetime
    paused: bool = False
    last_run_id: str | None = None


@dataclass
class Fired:
    """What one firing did: the rows' new ``next_tick_at`` and ``last_run_id`` (by name),
    the runs started (schedule, run id, idempotency key) and the ticks skipped (schedule)."""

    advance: dict[str, tuple[datetime, str | None]] = field(default_factory=dict)
    started: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# Decides, in the firing transaction, what the locked due rows do (starts runs through ``tx``).
Decide = Callable[[Primitives, list[ScheduleRow]], Awaitable[Fired]]


class Schedules(Protocol):
    async def upsert(self, rows: list[ScheduleRow]) -> None:
        """Insert or update each schedule's definition; an existing row keeps ``paused``,
        ``last_run_id`` and (when its cron and zone are unchanged) ``next_tick_at``."""
        ...

    async def all(self) -> list[ScheduleRow]: ...

    async def set_paused(self, name: str, paused: bool) -> bool:
        """False when there is no such schedule."""
        ...

    async def set_next_tick(self, name: str, at: datetime) -> None: ...

    async def set_last_run(self, name: str, run_id: str) -> None: ...

    async def next_due(self, names: list[str]) -> datetime | None:
        """The earliest ``next_tick_at`` of these schedules that are not paused."""
        ...

    async def fire(self, names: list[str], decide: Decide, now: datetime | None = None) -> Fired:
        """In one write transaction: lock these schedules' due, unpaused rows (``FOR UPDATE
        SKIP LOCKED`` on PostgreSQL; the writer lock on SQLite), let ``decide`` start their
        runs, and write the rows' ``Fired.advance``. ``now``: the due time (default: the
        transaction's clock)."""
        ...
