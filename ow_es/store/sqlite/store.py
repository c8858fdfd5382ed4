"""SQLite adapter (aiosqlite): WAL mode, one writer connection, ``BEGIN IMMEDIATE`` writes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiosqlite

from ow_es.errors import OwEsError, StoreUnavailable
from ow_es.models import Event, RunPage, StepAttempt, WorkflowRun
from ow_es.store import codec, migrator, tables
from ow_es.store.named_queries import load
from ow_es.store.port import (
    Backlog,
    LogBatch,
    MinuteCount,
    PoolStats,
    Primitives,
    WorkflowKey,
)
from ow_es.store.rebuild_port import Rebuilder
from ow_es.store.sqlite.errors import translate
from ow_es.store.sqlite.limits import SqliteLimits
from ow_es.store.sqlite.registry import SqliteRegistry
from ow_es.store.sqlite.retention import SqliteRetention
from ow_es.store.sqlite.schedules import SqliteSchedules
from ow_es.store.sqlite.transaction import SqliteTransaction, row_dict, ts, workflows_json
from ow_es.store.sqlite.wake import SqliteWakeChannel

Q = load("sqlite")
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


class SqliteStore:
    dialect = "sqlite"
    single = None  # one writer at a time: every append is a transaction

    def __init__(self, path: str, namespace: str, *, busy_timeout_ms: int = 30000) -> None:
        self.path = path
        self.namespace = namespace
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._wake = SqliteWakeChannel.for_path(path)
        # The adapter's parts beside the log: who serves what, retention, schedules, limits.
        self.registry = SqliteRegistry(self)
        self.retention = SqliteRetention(self)
        self.schedules = SqliteSchedules(self)
        self.limits = SqliteLimits(self)

    # -- lifecycle -------------------------------------------------------------------------

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def open(self, *, migrate: bool = True) -> None:
        try:
            if self.path != ":memory:":
                parent = os.path.dirname(os.path.abspath(self.path))
                if not os.path.isdir(parent):
                    raise StoreUnavailable(
                        f"cannot open SQLite database {self.path!r}: folder {parent!r} is missing"
                    )
            self._writer = await self._connect()
            if migrate:
                await self.migrate()
            else:
                migrator.pending("sqlite", await self._applied_version(self._writer))
            # :memory: is one database per connection: read through the writer then.
            self._reader = self._writer if self.path == ":memory:" else await self._connect()
        except sqlite3.Error as exc:
            await self.close()
            raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from None
        except OwEsError:
            await self.close()
            raise

    async def close(self) -> None:
        for conn in {id(c): c for c in (self._reader, self._writer) if c is not None}.values():
            await conn.close()
        self._reader = self._writer = None

    def reader(self) -> aiosqlite.Connection:
        """The connection reads go through (not the writer, unless in memory)."""
        return self._require(self._reader)

    def _require(self, conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise StoreUnavailable("the client is not connected (call connect() first)")
        return conn

    @asynccontextmanager
    async def write_tx(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction on the writer connection."""
        conn = self._require(self._writer)
        async with self._write_lock:
            try:
                try:
                    # IMMEDIATE: take the write lock now (a deferred upgrade fails at once).
                    await conn.execute("BEGIN IMMEDIATE")
                except asyncio.CancelledError:
                    # aiosqlite's thread still runs the BEGIN: end that transaction behind it,
                    # or the next write would find it open (a worker's heartbeat, cancelled
                    # as it stops, left its leave from the registry failing so).
                    with contextlib.suppress(sqlite3.Error):
                        await conn.execute("ROLLBACK")
                    raise
                try:
                    yield conn
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise translate(exc, what) from None

    # -- migrations ------------------------------------------------------------------------

    async def _applied_version(self, conn: aiosqlite.Connection) -> int:
        # execute_fetchall everywhere: a half-read cursor would pin an old read snapshot.
        found = await conn.execute_fetchall(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        )
        if not found:
            return 0
        rows = list(await conn.execute_fetchall("SELECT max(version) FROM schema_migrations"))
        return int(rows[0][0] or 0)

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        conn = self._require(self._writer)
        if dry_run:
            return [m.name for m in migrator.pending("sqlite", await self._applied_version(conn))]
        async with self.write_tx("migrating") as tx:
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            todo = migrator.pending("sqlite", await self._applied_version(tx))
            for migration in todo:
                for statement in _statements(migration.sql):
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, ts(_now())),
                )
        return [m.name for m in todo]

    async def schema_version(self) -> int:
        return await self._applied_version(self._require(self._reader))

    # -- writes ----------------------------------------------------------------------------

    async def transaction(self, what: str, fn: Callable[[Primitives], Awaitable[T]]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; wake in-process waiters after."""
        async with self.write_tx(what) as conn:
            tx = SqliteTransaction(conn, self.namespace, _now())
            result = await fn(tx)
        if tx.ready:
            self._wake.ready.set()
        if tx.done:
            self._wake.done.notify(tx.done)
        return result

    async def heartbeat(self, claims: dict[str, str], lease_seconds: float) -> set[str]:
        if not claims:
            return set()
        async with self.write_tx("extending leases") as conn:
            until = _now() + timedelta(seconds=lease_seconds)
            rows = await conn.execute_fetchall(
                Q["heartbeat"],
                (ts(until), self.namespace, tables.dumps([[k, v] for k, v in claims.items()])),
            )
            return {row[0] for row in rows}

    async def next_wake_at(self, workflows: Sequence[WorkflowKey]) -> datetime | None:
        if not workflows:
            return None
        params = {
            "ns": self.namespace,
            "now": ts(_now()),
            "names": tables.dumps(sorted({name for name, _ in workflows})),
            "workflows": workflows_json(workflows),
        }
        rows = list(await self._require(self._reader).execute_fetchall(Q["next_wake_at"], params))
        return datetime.fromisoformat(rows[0][0]) if rows and rows[0][0] else None

    # -- reads -----------------------------------------------------------------------------

    async def fetch(
        self, query: str, params: tuple[Any, ...] | dict[str, Any]
    ) -> list[dict[str, Any]]:
        try:
            rows = await self._require(self._reader).execute_fetchall(query, params)
            return [row_dict(r) for r in rows]
        except sqlite3.Error as exc:
            raise translate(exc, "reading") from None

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        rows = await self.fetch(Q["get_run"], (self.namespace, run_id))
        return codec.run_from_row(rows[0]) if rows else None

    async def list_runs(
        self, *, status: str | None, workflow_name: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        created, run_id = codec.decode_cursor(cursor) if cursor else (None, None)
        after = ts(created)
        rows = await self.fetch(
            Q["list_runs"],
            (
                self.namespace,
                status,
                status,
                workflow_name,
                workflow_name,
                after,
                after,
                run_id,
                limit + 1,
            ),
        )
        return codec.page_of([codec.run_from_row(r) for r in rows], limit)

    async def list_children(self, run_id: str) -> list[WorkflowRun]:
        rows = await self.fetch(Q["list_children"], (self.namespace, run_id))
        return [codec.run_from_row(r) for r in rows]

    async def step_attempts(self, run_id: str) -> list[StepAttempt]:
        rows = await self.fetch(Q["step_attempts"], (self.namespace, run_id))
        return [codec.step_from_row(r) for r in rows]

    async def read_run_events(self, run_id: str, after: int = 0) -> list[Event]:
        rows = await self.fetch(Q["run_events"], (self.namespace, run_id, after))
        return [codec.event_from_row(r) for r in rows]

    async def read_log(self, after: str | None, limit: int, *, barrier: bool = True) -> LogBatch:
        position = int(after) if after else 0
        rows = await self.fetch(Q["read_log"], (position, self.namespace, limit))
        cursor = str(rows[-1]["position"]) if rows else after
        return LogBatch(events=[codec.event_from_row(r) for r in rows], cursor=cursor)

    async def log_lag(self) -> float:
        return 0.0  # writers are serialised: nothing committed is ever held back

    async def count_runs(self) -> dict[tuple[str, str], int]:
        rows = await self.fetch(Q["count_runs"], (self.namespace,))
        return {(r["workflow_name"], r["status"]): int(r["n"]) for r in rows}

    def rebuilder(self) -> Rebuilder:
        from ow_es.store.sqlite.rebuild import SqliteRebuilder

        return SqliteRebuilder(self)

    def wake_channel(self) -> SqliteWakeChannel:
        return self._wake

    # -- monitoring (dashboard, metrics)

    async def ready_backlog(self) -> Backlog:
        now = _now()
        rows = await self.fetch(Q["ready_backlog"], (self.namespace, ts(now)))
        oldest = rows[0]["oldest"]
        age = (now - datetime.fromisoformat(oldest)).total_seconds() if oldest else 0.0
        return Backlog(ready=int(rows[0]["ready"]), oldest_age_seconds=max(age, 0.0))

    async def count_unowned(self) -> int:
        rows = await self.fetch(Q["count_unowned"], (self.namespace, ts(_now())))
        return int(rows[0]["n"])

    async def runs_per_minute(self, minutes: int) -> list[MinuteCount]:
        since = ts(_now() - timedelta(minutes=minutes))
        rows = await self.fetch(Q["runs_per_minute"], (self.namespace, since))
        return [
            MinuteCount(
                minute=datetime.fromisoformat(r["minute"]).replace(tzinfo=UTC),
                series=r["series"],
                count=int(r["n"]),
            )
            for r in rows
        ]

    async def runs_by_key(self, idempotency_key: str) -> list[WorkflowRun]:
        rows = await self.fetch(Q["runs_by_key"], (self.namespace, idempotency_key))
        return [codec.run_from_row(r) for r in rows]

    async def log_tail(self) -> str | None:
        rows = await self.fetch(Q["log_tail"], ())
        return None if rows[0]["position"] is None else str(rows[0]["position"])

    async def events_at(self, keys: Sequence[tuple[str, int]]) -> list[Event]:
        if not keys:
            return []
        pairs = tables.dumps([[run_id, seq] for run_id, seq in keys])
        rows = await self.fetch(Q["events_at"], (self.namespace, pairs))
        return [codec.event_from_row(r) for r in rows]

    def pool_stats(self) -> PoolStats | None:
        return None  # two connections (a reader, a writer), no pool


def _statements(script: str) -> list[str]:
    """Split a migration into statements (sqlite3 runs one at a time inside a transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--") and not current.strip():
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
