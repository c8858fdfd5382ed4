"""PostgreSQL side of ``reproject``: shadow tables, batched upserts, the gate and the swap."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ow_es.models import StepAttempt, WorkflowRun
from ow_es.projections import Recorded
from ow_es.store import codec, statements, tables
from ow_es.store.postgres.store import PostgresStore
from ow_es.store.rebuild_port import COMPARED, TABLES, Difference, GateBusy, RunKey
from ow_es.store.tables import RUNS, STEPS, Table


def _upsert_from_stage(table: Table) -> str:
    return (
        f"INSERT INTO {table.name}_rebuild SELECT * FROM ow_es_stage_{table.name} "
        + statements.upsert_clause(table)
    )


_UPSERT_FROM_STAGE = {table.name: _upsert_from_stage(table) for table in (RUNS, STEPS)}
_READ = """
SELECT namespace_id, run_id, seq, type, schema_version, data::text, created_at,
       tx_id::text AS tx_text, position
FROM events
WHERE (tx_id, position) > (%(tx)s::xid8, %(pos)s) {barrier}
ORDER BY tx_id, position
LIMIT %(limit)s
"""
_BARRIER = "AND tx_id < pg_snapshot_xmin(pg_current_snapshot())"


class PgRebuildTx:
    def __init__(self, conn: psycopg.AsyncConnection[Any], gate_key: int) -> None:
        self.conn = conn
        self._gate_key = gate_key

    async def read(self, cursor: str, limit: int, *, barrier: bool) -> tuple[list[Recorded], str]:
        tx, _, pos = cursor.partition(":")
        query = _READ.format(barrier=_BARRIER if barrier else "")
        cur = await self.conn.execute(cast(Any, query), {"tx": tx, "pos": int(pos), "limit": limit})
        rows = await cur.fetchall()
        if rows:
            cursor = f"{rows[-1][7]}:{rows[-1][8]}"
        return [codec.recorded_from_json(*row[:7]) for row in rows], cursor

    async def load_runs(self, keys: list[RunKey]) -> dict[RunKey, WorkflowRun]:
        cur = self.conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT * FROM workflow_runs_rebuild WHERE (namespace_id, id) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[]))",
            [[k[0] for k in keys], [k[1] for k in keys]],
        )
        runs = [codec.run_from_row(r) for r in await cur.fetchall()]
        return {(r.namespace_id, r.id): r for r in runs}

    async def write(self, runs: list[WorkflowRun], steps: list[StepAttempt], cursor: str) -> None:
        """COPY the batch's rows into session staging tables, then upsert each table in one
        statement (a statement per row is what made this slow)."""
        await self._stage(RUNS, [tables.values(RUNS, r) for r in runs])
        await self._stage(STEPS, [tables.values(STEPS, s) for s in steps])
        await self.conn.execute("UPDATE reproject_state SET cursor = %s", [cursor])

    async def _stage(self, spec: Table, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        table = spec.name
        stage = sql.Identifier(f"ow_es_stage_{table}")
        await self.conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS)"
                " ON COMMIT DELETE ROWS"
            ).format(stage, sql.Identifier(f"{table}_rebuild"))
        )
        # Named columns: a column added by a migration sits at the table's end, not in the
        # struct's order.
        columns = sql.SQL(", ").join(map(sql.Identifier, spec.names))
        copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(stage, columns)
        async with self.conn.cursor().copy(copy_in) as copy:
            for row in rows:
                await copy.write_row(row)
        await self.conn.execute(_UPSERT_FROM_STAGE[table])

    async def swap(self) -> None:
        # In the order every writer takes them (the run row first), so a writer that holds the
        # run table but not yet the gate (the one-statement append) cannot deadlock with us.
        await self.conn.execute("LOCK TABLE workflow_runs, step_attempts IN ACCESS EXCLUSIVE MODE")
        await self.conn.execute(
            "UPDATE workflow_runs_rebuild s SET lease_until = l.lease_until FROM workflow_runs l"
            " WHERE s.namespace_id = l.namespace_id AND s.id = l.id"
            " AND s.claim_token IS NOT NULL AND s.claim_token = l.claim_token"
        )  # live leases (moved by heartbeats) carry over
        for table in TABLES:
            await self._swap_table(table)
        await self.conn.execute("DELETE FROM reproject_state")

    async def _swap_table(self, table: str) -> None:
        ident = sql.Identifier
        previous, shadow = f"{table}_previous", f"{table}_rebuild"
        await self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(ident(previous)))
        for index in await _index_names(self.conn, table):
            await self.conn.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    ident(index), ident(f"{index}_previous")
                )
            )
        await self.conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(table), ident(previous))
        )
        await self.conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(shadow), ident(table))
        )
        for index in await _index_names(self.conn, table):
            await self.conn.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    ident(index),
                    ident(index.removesuffix("_rebuild").replace(f"{table}_rebuild", table)),
                )
            )

    async def diff(self) -> list[Difference]:
        found: list[Difference] = []
        for table, key in TABLES.items():
            columns = COMPARED[table]
            cols = sql.SQL(", ").join(map(sql.Identifier, columns))
            keys = sql.SQL(", ").join(map(sql.Identifier, key))
            query = sql.SQL(
                "SELECT {keys} FROM"
                " (SELECT {cols} FROM {live} EXCEPT SELECT {cols} FROM {shadow}) a"
                " UNION SELECT {keys} FROM"
                " (SELECT {cols} FROM {shadow} EXCEPT SELECT {cols} FROM {live}) b"
                " ORDER BY 1, 2 LIMIT 100"
            ).format(
                keys=keys,
                cols=cols,
                live=sql.Identifier(table),
                shadow=sql.Identifier(f"{table}_rebuild"),
            )
            cur = await self.conn.execute(query)
            for row in await cur.fetchall():
                found.append(await self._describe(table, key, tuple(row), columns))
        return found

    async def _describe(
        self, table: str, key: tuple[str, ...], values: tuple[Any, ...], columns: list[str]
    ) -> Difference:
        where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in key)
        rows = []
        for name in (table, f"{table}_rebuild"):
            cur = self.conn.cursor(row_factory=dict_row)
            await cur.execute(
                sql.SQL("SELECT * FROM {} WHERE {}").format(sql.Identifier(name), where), values
            )
            rows.append(await cur.fetchone())
        live, rebuilt = rows
        if live is None or rebuilt is None:
            return Difference(
                table, values, ["missing in " + ("live" if live is None else "rebuilt") + " table"]
            )
        return Difference(table, values, [c for c in columns if live[c] != rebuilt[c]])


class PostgresRebuilder:
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self.store.connection("reprojecting") as conn, conn.transaction():
            yield conn

    async def counts(self) -> dict[str, int]:
        async with self._tx() as conn:
            counts = {}
            for table in ("events", "workflow_runs", "step_attempts"):
                cur = await conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                )
                row = await cur.fetchone()
                counts[table] = int(row[0]) if row else 0
            return counts

    async def start(self) -> tuple[str, bool]:
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT cursor FROM reproject_state"
                " WHERE to_regclass('workflow_runs_rebuild') IS NOT NULL"
                " AND to_regclass('step_attempts_rebuild') IS NOT NULL"
            )
            row = await cur.fetchone()
            if row is not None:
                return str(row[0]), True
            await conn.execute("DELETE FROM reproject_state")
            await conn.execute("DROP TABLE IF EXISTS workflow_runs_rebuild, step_attempts_rebuild")
            for table, key in TABLES.items():
                shadow = sql.Identifier(f"{table}_rebuild")
                await conn.execute(
                    sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(
                        shadow, sql.Identifier(table)
                    )
                )
                await conn.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                        shadow,
                        sql.Identifier(f"{table}_rebuild_pkey"),
                        sql.SQL(", ").join(map(sql.Identifier, key)),
                    )
                )
            await conn.execute("INSERT INTO reproject_state (id, cursor) VALUES (1, '0:0')")
            return "0:0", False

    async def read(self, cursor: str, limit: int) -> tuple[list[Recorded], str]:
        async with self.store.connection("reading the log") as conn:
            return await PgRebuildTx(conn, self.store.gate_key).read(cursor, limit, barrier=True)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[PgRebuildTx]:
        async with self._tx() as conn:
            yield PgRebuildTx(conn, self.store.gate_key)

    async def build_indexes(self) -> None:
        """The live tables' secondary indexes, on the shadow tables, before the gate."""
        async with self._tx() as conn:
            for table in TABLES:
                cur = await conn.execute(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                    " AND tablename = %s AND indexname <> %s",
                    [table, f"{table}_pkey"],
                )
                for name, definition in await cur.fetchall():
                    shadow_def = re.sub(
                        rf"INDEX {re.escape(name)} ON (\S+\.)?{table} ",
                        f"INDEX IF NOT EXISTS {name}_rebuild ON {table}_rebuild ",
                        definition,
                        count=1,
                    )
                    await conn.execute(cast(Any, shadow_def))

    @asynccontextmanager
    async def gate(self, lock_timeout: float) -> AsyncIterator[PgRebuildTx]:
        async with self._tx() as conn:
            await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")
            try:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", [self.store.gate_key])
            except psycopg.errors.LockNotAvailable:
                raise GateBusy("the append gate is busy") from None
            try:
                yield PgRebuildTx(conn, self.store.gate_key)
            except psycopg.errors.LockNotAvailable:
                raise GateBusy("a table lock was not granted in time") from None

    @asynccontextmanager
    async def frozen(self, lock_timeout: float) -> AsyncIterator[PgFrozen]:
        """The gate as a session-level lock on a connection of its own, so it outlives the
        catch-up transaction; always unlocked before the connection goes back to the pool."""
        async with self.store.connection("verifying") as conn:
            await conn.execute(f"SET lock_timeout = '{int(lock_timeout * 1000)}ms'")
            try:
                await conn.execute("SELECT pg_advisory_lock(%s)", [self.store.gate_key])
            except psycopg.errors.LockNotAvailable:
                raise GateBusy("the append gate is busy") from None
            finally:
                await conn.execute("RESET lock_timeout")
            frozen = PgFrozen(self, conn)
            try:
                yield frozen
            finally:
                await frozen.release()

    async def discard(self) -> None:
        async with self._tx() as conn:
            await conn.execute("DROP TABLE IF EXISTS workflow_runs_rebuild, step_attempts_rebuild")
            await conn.execute("DELETE FROM reproject_state")


class PgFrozen:
    def __init__(
        self, rebuilder: PostgresRebuilder, lock_conn: psycopg.AsyncConnection[Any]
    ) -> None:
        self._rebuilder = rebuilder
        self._lock_conn = lock_conn
        self.released_at: float | None = None

    def batch(self) -> AbstractAsyncContextManager[PgRebuildTx]:
        return self._rebuilder.batch()

    async def release(self) -> None:
        if self.released_at is None:
            key = self._rebuilder.store.gate_key
            await self._lock_conn.execute("SELECT pg_advisory_unlock(%s)", [key])
            self.released_at = asyncio.get_running_loop().time()

    async def diff_after_release(self) -> list[Difference]:
        async with self._rebuilder.store.connection("verifying") as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await conn.execute("SELECT 1")  # the snapshot is taken here, appends still held
            await self.release()
            return await PgRebuildTx(conn, self._rebuilder.store.gate_key).diff()


async def _index_names(conn: psycopg.AsyncConnection[Any], table: str) -> list[str]:
    cur = await conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s",
        [table],
    )
    return [row[0] for row in await cur.fetchall()]
