"""Schedules on PostgreSQL (see ``schedules_port.Schedules``): firing locks the due rows
``FOR UPDATE SKIP LOCKED``, so workers firing at once take different schedules and never queue
behind each other; the database's clock decides what is due."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import msgspec
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ow_es.store.port import Primitives
from ow_es.store.postgres.transaction import PostgresTransaction
from ow_es.store.schedules_port import Decide, Fired, ScheduleRow

if TYPE_CHECKING:
    from ow_es.store.postgres.store import PostgresStore

_COLUMNS = (
    "name, workflow_name, version, cron, timezone, input, tick, overlap, catch_up, next_tick_at,"
    " paused, last_run_id"
)
_UPSERT = """
INSERT INTO schedules (namespace_id, name, workflow_name, version, cron, timezone, input, tick,
                       overlap, catch_up, next_tick_at)
VALUES (%(ns)s, %(name)s, %(workflow_name)s, %(version)s, %(cron)s, %(timezone)s, %(input)s,
        %(tick)s, %(overlap)s, %(catch_up)s, %(next_tick_at)s)
ON CONFLICT (namespace_id, name) DO UPDATE SET
    workflow_name = excluded.workflow_name, version = excluded.version, input = excluded.input,
    tick = excluded.tick,
    overlap = excluded.overlap, catch_up = excluded.catch_up,
    next_tick_at = CASE WHEN schedules.cron = excluded.cron
                         AND schedules.timezone = excluded.timezone
                        THEN schedules.next_tick_at ELSE excluded.next_tick_at END,
    cron = excluded.cron, timezone = excluded.timezone
RETURNING name
"""
_LIST = f"SELECT {_COLUMNS} FROM schedules WHERE namespace_id = %(ns)s ORDER BY name"
_PAUSE = """
UPDATE schedules SET paused = %(paused)s WHERE namespace_id = %(ns)s AND name = %(name)s
RETURNING name
"""
_SET_NEXT = """
UPDATE schedules SET next_tick_at = %(at)s WHERE namespace_id = %(ns)s AND name = %(name)s
RETURNING name
"""
_SET_LAST = """
UPDATE schedules SET last_run_id = %(run_id)s WHERE namespace_id = %(ns)s AND name = %(name)s
RETURNING name
"""
_NEXT_DUE = """
SELECT min(next_tick_at) AS at FROM schedules
WHERE namespace_id = %(ns)s AND name = ANY(%(names)s) AND NOT paused
"""
_LOCK_DUE = f"""
SELECT {_COLUMNS} FROM schedules
WHERE namespace_id = %(ns)s AND name = ANY(%(names)s) AND NOT paused
  AND next_tick_at <= coalesce(%(now)s::timestamptz, now())
ORDER BY name
FOR UPDATE SKIP LOCKED
"""
_ADVANCE = """
UPDATE schedules SET next_tick_at = %(at)s, last_run_id = coalesce(%(run_id)s, last_run_id)
WHERE namespace_id = %(ns)s AND name = %(name)s
"""


def _row(row: dict[str, Any]) -> ScheduleRow:
    return msgspec.convert(row, ScheduleRow, strict=False)


class PostgresSchedules:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    # Each write but ``fire`` is idempotent, so it goes through the store's retried ``fetch``.

    async def upsert(self, rows: list[ScheduleRow]) -> None:
        for row in rows:
            params = msgspec.structs.asdict(row)
            params["input"] = Jsonb(row.input)
            await self._store.fetch(_UPSERT, params, "recording a schedule")

    async def all(self) -> list[ScheduleRow]:
        return [_row(r) for r in await self._store.fetch(_LIST, {}, "listing schedules")]

    async def set_paused(self, name: str, paused: bool) -> bool:
        params = {"name": name, "paused": paused}
        return bool(await self._store.fetch(_PAUSE, params, "pausing a schedule"))

    async def set_next_tick(self, name: str, at: datetime) -> None:
        await self._store.fetch(_SET_NEXT, {"name": name, "at": at}, "moving a schedule")

    async def set_last_run(self, name: str, run_id: str) -> None:
        params = {"name": name, "run_id": run_id}
        await self._store.fetch(_SET_LAST, params, "recording a schedule's run")

    async def next_due(self, names: list[str]) -> datetime | None:
        rows = await self._store.fetch(_NEXT_DUE, {"names": names}, "reading schedules")
        return cast(datetime | None, rows[0]["at"]) if rows else None

    async def fire(self, names: list[str], decide: Decide, now: datetime | None = None) -> Fired:
        ns = self._store.namespace

        async def body(tx: Primitives) -> Fired:
            assert isinstance(tx, PostgresTransaction)
            conn = tx._conn
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_LOCK_DUE, {"ns": ns, "names": names, "now": now})
            rows = [_row(r) for r in await cur.fetchall()]
            if not rows:
                return Fired()
            fired = await decide(tx, rows)
            for name, (at, run_id) in fired.advance.items():
                params = {"ns": ns, "name": name, "at": at, "run_id": run_id}
                await conn.execute(_ADVANCE, params)
            return fired

        return await self._store.transaction("firing schedules", body)
