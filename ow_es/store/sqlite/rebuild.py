"""SQLite side of ``reproject``. Writers are serialised by SQLite itself, so the write lock of
``BEGIN IMMEDIATE`` is the gate; indexes are recreated on the swapped-in tables."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import aiosqlite

from ow_es.models import StepAttempt, WorkflowRun
from ow_es.projections import Recorded
from ow_es.store import codec, statements, tables
from ow_es.store.rebuild_port import COMPARED, TABLES, Difference, RunKey
from ow_es.store.sqlite.store import SqliteStore
from ow_es.store.sqlite.transaction import row_dict, ts
from ow_es.store.tables import RUNS, STEPS

_UPSERT_RUN = statements.upsert(RUNS, "sqlite", into=f"{RUNS.name}_rebuild")
_UPSERT_STEP = statements.upsert(STEPS, "sqlite", into=f"{STEPS.name}_rebuild")


class SqliteRebuildTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def read(self, cursor: str, limit: int, *, barrier: bool) -> tuple[list[Recorded], str]:
        # Writers are serialised, so positions commit in order: no barrier needed.
        rows = list(
            await self.conn.execute_fetchall(
                "SELECT namespace_id, run_id, seq, type, schema_version, data, created_at,"
                " position FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (int(cursor), limit),
            )
        )
        events = [
            codec.recorded_from_json(
                row[0], row[1], row[2], row[3], row[4], row[5], datetime.fromisoformat(row[6])
            )
            for row in rows
        ]
        return events, str(rows[-1][7]) if rows else cursor

    async def load_runs(self, keys: list[RunKey]) -> dict[RunKey, WorkflowRun]:
        rows = await self.conn.execute_fetchall(
            "SELECT * FROM workflow_runs_rebuild WHERE (namespace_id, id) IN"
            " (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))",
            (tables.dumps([list(k) for k in keys]),),
        )
        runs = [codec.run_from_row(row_dict(r)) for r in rows]
        return {(r.namespace_id, r.id): r for r in runs}

    async def write(self, runs: list[WorkflowRun], steps: list[StepAttempt], cursor: str) -> None:
        if runs:
            await self.conn.executemany(_UPSERT_RUN, [tables.values(RUNS, r, ts) for r in runs])
        if steps:
            await self.conn.executemany(_UPSERT_STEP, [tables.values(STEPS, s, ts) for s in steps])
        await self.conn.execute("UPDATE reproject_state SET cursor = ?", (cursor,))

    async def swap(self) -> None:
        await self.conn.execute(
            "UPDATE workflow_runs_rebuild AS s SET lease_until = l.lease_until"
            " FROM workflow_runs AS l WHERE s.namespace_id = l.namespace_id AND s.id = l.id"
            " AND s.claim_token IS NOT NULL AND s.claim_token = l.claim_token"
        )  # live leases (moved by heartbeats) carry over
        for table in TABLES:
            previous = f"{table}_previous"
            indexes = await self.conn.execute_fetchall(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
                " AND sql IS NOT NULL",
                (table,),
            )
            await self.conn.execute(f"DROP TABLE IF EXISTS {previous}")
            for name, _ in indexes:
                await self.conn.execute(f"DROP INDEX {name}")  # index names are global
            await self.conn.execute(f"ALTER TABLE {table} RENAME TO {previous}")
            await self.conn.execute(f"ALTER TABLE {table}_rebuild RENAME TO {table}")
            for _, definition in indexes:
                await self.conn.execute(definition)
        await self.conn.execute("DELETE FROM reproject_state")

    async def diff(self) -> list[Difference]:
        found: list[Difference] = []
        for table, key in TABLES.items():
            cols = ", ".join(COMPARED[table])
            keys = ", ".join(key)
            shadow = f"{table}_rebuild"
            rows = await self.conn.execute_fetchall(
                f"SELECT {keys} FROM"
                f" (SELECT {cols} FROM {table} EXCEPT SELECT {cols} FROM {shadow})"
                f" UNION SELECT {keys} FROM (SELECT {cols} FROM {shadow} EXCEPT SELECT {cols} FROM"
                f" {table}) ORDER BY 1, 2 LIMIT 100"
            )
            for row in rows:
                found.append(await self._describe(table, key, tuple(row)))
        return found

    async def _describe(
        self, table: str, key: tuple[str, ...], values: tuple[Any, ...]
    ) -> Difference:
        where = " AND ".join(f"{k} = ?" for k in key)
        found = []
        for name in (table, f"{table}_rebuild"):
            rows = await self.conn.execute_fetchall(f"SELECT * FROM {name} WHERE {where}", values)
            found.append(dict(next(iter(rows))) if rows else None)
        live, rebuilt = found
        if live is None or rebuilt is None:
            side = "live" if live is None else "rebuilt"
            return Difference(table, values, [f"missing in the {side} table"])
        return Difference(table, values, [c for c in COMPARED[table] if live[c] != rebuilt[c]])


class SqliteFrozen:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._tx = SqliteRebuildTx(conn)
        self.released_at: float | None = None

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[SqliteRebuildTx]:
        yield self._tx

    async def diff_after_release(self) -> list[Difference]:
        differences = await self._tx.diff()
        self.released_at = asyncio.get_running_loop().time()
        return differences


class SqliteRebuilder:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self.store.write_tx("reprojecting") as conn:
            yield conn

    async def counts(self) -> dict[str, int]:
        async with self._tx() as conn:
            counts = {}
            for table in ("events", "workflow_runs", "step_attempts"):
                rows = await conn.execute_fetchall(f"SELECT count(*) FROM {table}")
                counts[table] = int(next(iter(rows))[0])
            return counts

    async def start(self) -> tuple[str, bool]:
        async with self._tx() as conn:
            rows = await conn.execute_fetchall(
                "SELECT cursor FROM reproject_state WHERE 2 = (SELECT count(*) FROM sqlite_master"
                " WHERE name IN ('workflow_runs_rebuild', 'step_attempts_rebuild'))"
            )
            if rows:
                return str(next(iter(rows))[0]), True
            await conn.execute("DELETE FROM reproject_state")
            for table in TABLES:
                await conn.execute(f"DROP TABLE IF EXISTS {table}_rebuild")
                (ddl,) = next(
                    iter(
                        await conn.execute_fetchall(
                            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                            (table,),
                        )
                    )
                )
                await conn.execute(
                    re.sub(rf'^CREATE TABLE "?{table}"?', f"CREATE TABLE {table}_rebuild", ddl)
                )
            await conn.execute(
                "INSERT INTO reproject_state (id, cursor, started_at)"
                " VALUES (1, '0', datetime('now'))"
            )
            return "0", False

    async def read(self, cursor: str, limit: int) -> tuple[list[Recorded], str]:
        # Positions commit in order on SQLite: the reader connection needs no barrier.
        conn = self.store.reader()
        return await SqliteRebuildTx(conn).read(cursor, limit, barrier=True)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[SqliteRebuildTx]:
        async with self._tx() as conn:
            yield SqliteRebuildTx(conn)

    async def build_indexes(self) -> None:
        return None  # recreated at the swap

    @asynccontextmanager
    async def gate(self, lock_timeout: float) -> AsyncIterator[SqliteRebuildTx]:
        async with self._tx() as conn:
            yield SqliteRebuildTx(conn)

    @asynccontextmanager
    async def frozen(self, lock_timeout: float) -> AsyncIterator[SqliteFrozen]:
        """SQLite's write lock is the gate: catch up and diff in one immediate transaction."""
        async with self._tx() as conn:
            yield SqliteFrozen(conn)

    async def discard(self) -> None:
        async with self._tx() as conn:
            for table in TABLES:
                await conn.execute(f"DROP TABLE IF EXISTS {table}_rebuild")
            await conn.execute("DELETE FROM reproject_state")
