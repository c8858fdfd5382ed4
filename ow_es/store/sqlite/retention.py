"""Retention and archive import on SQLite (see ``retention_port.Retention``).

Each batch is one ``BEGIN IMMEDIATE`` transaction: SQLite's single writer serialises
concurrent retention, so nothing needs locking. The log's triggers let deletes through while
``event_mutation_gate`` holds a row; the batch inserts it just before its deletes and removes
it before committing, so no other transaction ever sees the gate open.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

from ow_es.store import codec, statements, tables
from ow_es.store.retention_port import (
    ArchivedRun,
    ArchiveSink,
    Node,
    SweepResult,
    deletable,
    group,
    in_namespace,
)
from ow_es.store.sqlite.transaction import row_dict, ts
from ow_es.store.tables import EVENTS, RUNS, STEPS

if TYPE_CHECKING:
    from ow_es.store.sqlite.store import SqliteStore

_NODE = "id, parent_run_id, status, finished_at"
_IDS = "(SELECT value FROM json_each(?))"

# Roots (no parent row) through the workflow_runs_finished index, in (finished_at, id) order.
_ROOTS = f"""
SELECT {_NODE} FROM workflow_runs AS r
WHERE r.namespace_id = ? AND r.finished_at IS NOT NULL AND r.finished_at < ?
  AND (r.finished_at > ? OR (r.finished_at = ? AND r.id > ?))
  AND r.status IN ('completed', 'failed', 'canceled')
  AND (r.parent_run_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM workflow_runs AS p
        WHERE p.namespace_id = r.namespace_id AND p.id = r.parent_run_id))
ORDER BY r.finished_at, r.id
LIMIT ?
"""
_CHILDREN = f"SELECT {_NODE} FROM workflow_runs WHERE namespace_id = ? AND parent_run_id IN {_IDS}"
_RUNS = f"SELECT * FROM workflow_runs WHERE namespace_id = ? AND id IN {_IDS}"
_STEPS = f"""
SELECT * FROM step_attempts WHERE namespace_id = ? AND run_id IN {_IDS}
ORDER BY run_id, started_at, step_name, attempt
"""
_EVENTS = f"""
SELECT namespace_id, run_id, position, seq, type, schema_version, data, created_at
FROM events WHERE namespace_id = ? AND run_id IN {_IDS} ORDER BY run_id, seq
"""
_COUNT_STEPS = f"SELECT count(*) FROM step_attempts WHERE namespace_id = ? AND run_id IN {_IDS}"
_COUNT_EVENTS = f"SELECT count(*) FROM events WHERE namespace_id = ? AND run_id IN {_IDS}"
_OPEN_GATE = "INSERT INTO event_mutation_gate (opened) VALUES (1)"
_CLOSE_GATE = "DELETE FROM event_mutation_gate"
_DELETE_EVENTS = f"DELETE FROM events WHERE namespace_id = ? AND run_id IN {_IDS}"
_DELETE_STEPS = f"DELETE FROM step_attempts WHERE namespace_id = ? AND run_id IN {_IDS}"
_DELETE_RUNS = f"DELETE FROM workflow_runs WHERE namespace_id = ? AND id IN {_IDS}"

_INSERT_RUN = statements.insert(RUNS, "sqlite", if_new=True)
_INSERT_STEP = statements.insert(STEPS, "sqlite")
_INSERT_EVENT = statements.insert(EVENTS, "sqlite")


def _node(row: Any) -> Node:
    finished = row["finished_at"]
    return Node(
        row["id"],
        row["parent_run_id"],
        row["status"],
        datetime.fromisoformat(finished) if finished else None,
    )


# Oldest first through signal_sends_created (migration 0005), a batch at a time.
_OLD_SENDS = """
SELECT rowid FROM signal_sends WHERE namespace_id = ?1 AND created_at < ?2
ORDER BY created_at LIMIT ?3
"""
_FORGET_SENDS = f"DELETE FROM signal_sends WHERE rowid IN ({_OLD_SENDS}) RETURNING 1"
_COUNT_SENDS = f"SELECT count(*) FROM ({_OLD_SENDS})"


class SqliteRetention:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def sweep(
        self,
        cutoff: datetime,
        after: tuple[datetime, str],
        limit: int,
        *,
        dry_run: bool,
        archive: ArchiveSink | None,
    ) -> SweepResult:
        ns = self._store.namespace
        async with self._store.write_tx("deleting old runs") as conn:
            at = ts(after[0])
            params = (ns, ts(cutoff), at, at, after[1], limit)
            roots = [_node(r) for r in await conn.execute_fetchall(_ROOTS, params)]
            if not roots:
                return SweepResult()
            cursor = (roots[-1].finished_at or after[0], roots[-1].id)
            nodes, frontier = list(roots), [r.id for r in roots]
            while frontier:
                rows = await conn.execute_fetchall(_CHILDREN, (ns, tables.dumps(frontier)))
                level = [_node(r) for r in rows]
                nodes.extend(level)
                frontier = [n.id for n in level]
            ids = deletable([r.id for r in roots], nodes, cutoff)
            result = SweepResult(cursor=cursor, runs=len(ids))
            if not ids:
                return result
            key = (ns, tables.dumps(ids))
            if dry_run:
                result.steps = await _count(conn, _COUNT_STEPS, key)
                result.events = await _count(conn, _COUNT_EVENTS, key)
                return result
            if archive is not None:
                records = group(
                    [codec.run_from_row(r) for r in await _rows(conn, _RUNS, key)],
                    [codec.step_from_row(r) for r in await _rows(conn, _STEPS, key)],
                    [codec.event_from_row(r) for r in await _rows(conn, _EVENTS, key)],
                )
                await archive(records)
                result.archived = len(records)
            await conn.execute(_OPEN_GATE)
            result.events = (await conn.execute(_DELETE_EVENTS, key)).rowcount
            await conn.execute(_CLOSE_GATE)
            result.steps = (await conn.execute(_DELETE_STEPS, key)).rowcount
            result.runs = (await conn.execute(_DELETE_RUNS, key)).rowcount
            return result

    async def forget_sends(self, cutoff: datetime, limit: int, *, dry_run: bool) -> int:
        params = (self._store.namespace, ts(cutoff), limit)
        if dry_run:
            return await _count(self._store.reader(), _COUNT_SENDS, params)
        async with self._store.write_tx("forgetting old signal sends") as conn:
            return len(list(await conn.execute_fetchall(_FORGET_SENDS, params)))

    async def restore(self, runs: list[ArchivedRun]) -> list[str]:
        ns = self._store.namespace
        inserted: list[str] = []
        async with self._store.write_tx("importing runs") as conn:
            for record in runs:
                row = tables.values(RUNS, in_namespace(record.run, ns), ts)
                if not await conn.execute_fetchall(_INSERT_RUN, row):
                    continue  # its id or idempotency key is taken
                inserted.append(record.run.id)
                steps = [tables.values(STEPS, in_namespace(s, ns), ts) for s in record.steps]
                await conn.executemany(_INSERT_STEP, steps)
                events = [
                    (ns, e.run_id, e.seq, e.type, e.schema_version, tables.dumps(e.data),
                     ts(e.created_at))
                    for e in record.events
                ]  # fmt: skip
                await conn.executemany(_INSERT_EVENT, events)
        return inserted


async def _count(conn: aiosqlite.Connection, query: str, params: tuple[Any, ...]) -> int:
    rows = list(await conn.execute_fetchall(query, params))
    return int(rows[0][0]) if rows else 0


async def _rows(
    conn: aiosqlite.Connection, query: str, params: tuple[Any, ...]
) -> list[dict[str, Any]]:
    return [row_dict(r) for r in await conn.execute_fetchall(query, params)]
