"""Schedules on SQLite (see ``schedules_port.Schedules``): firing holds the writer lock, so
one firing at a time; every time here comes from the local clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ow_es.store import tables
from ow_es.store.port import Primitives
from ow_es.store.schedules_port import Decide, Fired, ScheduleRow
from ow_es.store.sqlite.transaction import SqliteTransaction, row_dict, ts

if TYPE_CHECKING:
    from ow_es.store.sqlite.store import SqliteStore

_COLUMNS = (
    "name, workflow_name, version, cron, timezone, input, tick, overlap, catch_up, next_tick_at,"
    " paused, last_run_id"
)
_UPSERT = """
INSERT INTO schedules (namespace_id, name, workflow_name, version, cron, timezone, input, tick,
                       overlap, catch_up, next_tick_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (namespace_id, name) DO UPDATE SET
    workflow_name = excluded.workflow_name, version = excluded.version, input = excluded.input,
    tick = excluded.tick,
    overlap = excluded.overlap, catch_up = excluded.catch_up,
    next_tick_at = CASE WHEN schedules.cron = excluded.cron
                         AND schedules.timezone = excluded.timezone
                        THEN schedules.next_tick_at ELSE excluded.next_tick_at END,
    cron = excluded.cron, timezone = excluded.timezone
"""
_LIST = f"SELECT {_COLUMNS} FROM schedules WHERE namespace_id = ? ORDER BY name"
_PAUSE = "UPDATE schedules SET paused = ? WHERE namespace_id = ? AND name = ?"
_SET_NEXT = "UPDATE schedules SET next_tick_at = ? WHERE namespace_id = ? AND name = ?"
_SET_LAST = "UPDATE schedules SET last_run_id = ? WHERE namespace_id = ? AND name = ?"
_NEXT_DUE = """
SELECT min(next_tick_at) AS at FROM schedules
WHERE namespace_id = ? AND name IN (SELECT value FROM json_each(?)) AND NOT paused
"""
_LOCK_DUE = f"""
SELECT {_COLUMNS} FROM schedules
WHERE namespace_id = ? AND name IN (SELECT value FROM json_each(?)) AND NOT paused
  AND next_tick_at <= ?
ORDER BY name
"""
_ADVANCE = """
UPDATE schedules SET next_tick_at = ?, last_run_id = coalesce(?, last_run_id)
WHERE namespace_id = ? AND name = ?
"""


def _row(data: dict[str, Any]) -> ScheduleRow:
    data["next_tick_at"] = datetime.fromisoformat(data["next_tick_at"])
    data["paused"] = bool(data["paused"])
    data["tick"] = bool(data["tick"])
    return msgspec.convert(data, ScheduleRow, strict=False)


class SqliteSchedules:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def _write(self, what: str, query: str, params: tuple[Any, ...]) -> int:
        async with self._store.write_tx(what) as conn:
            cur = await conn.execute(query, params)
            return cur.rowcount

    async def upsert(self, rows: list[ScheduleRow]) -> None:
        async with self._store.write_tx("recording schedules") as conn:
            for r in rows:
                await conn.execute(
                    _UPSERT,
                    (self._store.namespace, r.name, r.workflow_name, r.version, r.cron,
                     r.timezone, tables.dumps_or_null(r.input), int(r.tick), r.overlap, r.catch_up,
                     ts(r.next_tick_at)),
                )  # fmt: skip

    async def all(self) -> list[ScheduleRow]:
        return [_row(r) for r in await self._store.fetch(_LIST, (self._store.namespace,))]

    async def set_paused(self, name: str, paused: bool) -> bool:
        params = (int(paused), self._store.namespace, name)
        return await self._write("pausing a schedule", _PAUSE, params) > 0

    async def set_next_tick(self, name: str, at: datetime) -> None:
        await self._write("moving a schedule", _SET_NEXT, (ts(at), self._store.namespace, name))

    async def set_last_run(self, name: str, run_id: str) -> None:
        params = (run_id, self._store.namespace, name)
        await self._write("recording a schedule's run", _SET_LAST, params)

    async def next_due(self, names: list[str]) -> datetime | None:
        rows = await self._store.fetch(_NEXT_DUE, (self._store.namespace, tables.dumps(names)))
        return datetime.fromisoformat(rows[0]["at"]) if rows and rows[0]["at"] else None

    async def fire(self, names: list[str], decide: Decide, now: datetime | None = None) -> Fired:
        ns = self._store.namespace

        async def body(tx: Primitives) -> Fired:
            assert isinstance(tx, SqliteTransaction)
            conn = tx._conn
            due = now or await tx.now()
            found = await conn.execute_fetchall(_LOCK_DUE, (ns, tables.dumps(names), ts(due)))
            rows = [_row(row_dict(r)) for r in found]
            if not rows:
                return Fired()
            fired = await decide(tx, rows)
            for name, (at, run_id) in fired.advance.items():
                await conn.execute(_ADVANCE, (ts(at.astimezone(UTC)), run_id, ns, name))
            return fired

        return await self._store.transaction("firing schedules", body)
