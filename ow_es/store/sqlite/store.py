"""SQLite adapter (aiosqlite): WAL mode, one writer connection, ``BEGIN IMMEDIATE`` writes."""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import aiosqlite
import msgspec

from ow_es.errors import OwEsError, StoreUnavailable
from ow_es.models import Event, RunPage, StepAttempt, WorkflowRun
from ow_es.reproject import Rebuilder
from ow_es.store import codec, migrator
from ow_es.store.named_queries import load
from ow_es.store.planner import Plan
from ow_es.store.port import LogBatch, WorkflowKey
from ow_es.store.tx import Transaction, TransactionalStore
from ow_es.store.wake import DoneWaiters, ReadySignal, Waiter

Q = load("sqlite")
T = TypeVar("T")
_JSON_COLUMNS = {"input", "output", "error", "waiting_for", "data"}


def ts(value: datetime | None) -> str | None:
    """Fixed-width UTC text, so text order is time order."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _now() -> datetime:
    return datetime.now(UTC)


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS.intersection(out):
        if out[key] is not None:
            out[key] = msgspec.json.decode(out[key])
    return out


def _run_params(run: WorkflowRun) -> tuple[Any, ...]:
    return codec.run_values(run, ts)


def _step_params(step: StepAttempt) -> tuple[Any, ...]:
    return codec.step_values(step, ts)


class _Shared:
    """Per-process wake-ups for one database file: client and worker in one process share it."""

    registry: ClassVar[dict[str, _Shared]] = {}

    def __init__(self) -> None:
        self.ready = ReadySignal()
        self.done = DoneWaiters()

    @classmethod
    def for_path(cls, path: str) -> _Shared:
        key = path if path == ":memory:" else os.path.abspath(path)
        return cls.registry.setdefault(key, cls())


class SqliteWakeChannel:
    """Polling (the worker adapts its interval) plus the in-process wake of ``_Shared``."""

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def wait_ready(self, timeout: float) -> bool:
        return await self._shared.ready.wait(timeout)

    def subscribe_done(self, run_id: str) -> Waiter:
        return self._shared.done.subscribe(run_id)


class SqliteStore(TransactionalStore):
    backend = "sqlite"

    def __init__(self, path: str, namespace: str, *, busy_timeout_ms: int = 30000) -> None:
        self.path = path
        self.namespace = namespace
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._shared = _Shared.for_path(path)
        self._wake = SqliteWakeChannel(self._shared)

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

    def _require(self, conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise StoreUnavailable("the client is not connected (call connect() first)")
        return conn

    @asynccontextmanager
    async def _write_tx(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        conn = self._require(self._writer)
        async with self._write_lock:
            try:
                # IMMEDIATE: take the write lock now (a deferred upgrade fails at once).
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite error while {what}: {exc}") from None

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
        async with self._write_tx("migrating") as tx:
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

    async def run(self, what: str, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; wake in-process waiters after."""
        async with self._write_tx(what) as conn:
            tx = SqliteTransaction(self, conn, _now())
            result = await fn(tx)
        if tx.ready:
            self._shared.ready.set()
        if tx.done:
            self._shared.done.notify(tx.done)
        return result

    async def heartbeat(self, claims: dict[str, str], lease_seconds: float) -> set[str]:
        if not claims:
            return set()
        async with self._write_tx("extending leases") as conn:
            until = _now() + timedelta(seconds=lease_seconds)
            rows = await conn.execute_fetchall(
                Q["heartbeat"],
                (ts(until), self.namespace, codec.dumps([[k, v] for k, v in claims.items()])),
            )
            return {row[0] for row in rows}

    async def next_wake_at(self, workflows: Sequence[WorkflowKey]) -> datetime | None:
        if not workflows:
            return None
        now, wf = ts(_now()), _workflows_json(workflows)
        rows = list(
            await self._require(self._reader).execute_fetchall(
                Q["next_wake_at"], (self.namespace, now, wf, self.namespace, now, wf)
            )
        )
        return datetime.fromisoformat(rows[0][0]) if rows and rows[0][0] else None

    # -- reads -----------------------------------------------------------------------------

    async def _fetch(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        try:
            rows = await self._require(self._reader).execute_fetchall(query, params)
            return [_row(r) for r in rows]
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite error while reading: {exc}") from None

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        rows = await self._fetch(Q["get_run"], (self.namespace, run_id))
        return codec.run_from_row(rows[0]) if rows else None

    async def list_runs(
        self, *, status: str | None, workflow_name: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        created, run_id = codec.decode_cursor(cursor) if cursor else (None, None)
        after = ts(created)
        rows = await self._fetch(
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
        rows = await self._fetch(Q["list_children"], (self.namespace, run_id))
        return [codec.run_from_row(r) for r in rows]

    async def step_attempts(self, run_id: str) -> list[StepAttempt]:
        rows = await self._fetch(Q["step_attempts"], (self.namespace, run_id))
        return [codec.step_from_row(r) for r in rows]

    async def read_run_events(self, run_id: str) -> list[Event]:
        rows = await self._fetch(Q["run_events"], (self.namespace, run_id))
        return [codec.event_from_row(r) for r in rows]

    async def read_log(self, after: str | None, limit: int, *, barrier: bool = True) -> LogBatch:
        position = int(after) if after else 0
        rows = await self._fetch(Q["read_log"], (position, self.namespace, limit))
        cursor = str(rows[-1]["position"]) if rows else after
        return LogBatch(events=[codec.event_from_row(r) for r in rows], cursor=cursor)

    async def log_lag(self) -> float:
        return 0.0  # writers are serialised: nothing committed is ever held back

    async def count_runs(self) -> dict[tuple[str, str], int]:
        rows = await self._fetch(Q["count_runs"], (self.namespace,))
        return {(r["workflow_name"], r["status"]): int(r["n"]) for r in rows}

    def rebuilder(self) -> Rebuilder:
        from ow_es.store.sqlite.rebuild import SqliteRebuilder

        return SqliteRebuilder(self)

    def wake_channel(self) -> SqliteWakeChannel:
        return self._wake


@functools.cache
def _update_statement(columns: tuple[str, ...]) -> str:
    """UPDATE of just these columns (the names come from the model, never from input)."""
    assignments = ", ".join(f"{column} = ?" for column in columns)
    return f"UPDATE workflow_runs SET {assignments} WHERE namespace_id = ? AND id = ?"


def _workflows_json(workflows: Sequence[WorkflowKey]) -> str:
    return codec.dumps([[name, version or ""] for name, version in workflows])


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


class SqliteTransaction(Transaction):
    def __init__(self, store: SqliteStore, conn: aiosqlite.Connection, now: datetime) -> None:
        super().__init__(store.namespace)
        self._conn = conn
        self.now = now

    async def clock(self) -> datetime:
        return self.now

    async def _rows(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [_row(r) for r in await self._conn.execute_fetchall(query, params)]

    async def insert_runs(self, runs: list[WorkflowRun]) -> set[str]:
        inserted: set[str] = set()
        for run in runs:
            run = msgspec.structs.replace(run, created_at=self.now, updated_at=self.now)
            rows = await self._conn.execute_fetchall(Q["insert_run"], _run_params(run))
            inserted.update(row[0] for row in rows)
        return inserted

    async def find_by_key(self, workflow_name: str, key: str | None) -> WorkflowRun | None:
        rows = await self._rows(Q["find_by_key"], (self.namespace, workflow_name, key))
        return codec.run_from_row(rows[0]) if rows else None

    async def lock_runs(self, run_ids: list[str]) -> dict[str, WorkflowRun]:
        # BEGIN IMMEDIATE already holds the database's write lock.
        rows = await self._rows(Q["lock_runs"], (self.namespace, codec.dumps(run_ids)))
        return {row["id"]: codec.run_from_row(row) for row in rows}

    async def write(self, plan: Plan) -> None:
        if plan.events:
            await self._conn.executemany(
                Q["insert_event"], [codec.event_values(e, time=ts) for e in plan.events]
            )
        for columns, params in codec.run_changes(plan.updated_runs, ts).items():
            await self._conn.executemany(_update_statement(columns), params)
        if plan.steps:
            await self._conn.executemany(Q["upsert_step"], [_step_params(s) for s in plan.steps])

    async def claim_ready(self, workflows: Sequence[WorkflowKey], limit: int) -> list[WorkflowRun]:
        now = ts(self.now)
        rows = await self._rows(
            Q["claim_ready"], (self.namespace, now, now, _workflows_json(workflows), limit)
        )
        return [codec.run_from_row(row) for row in rows]

    async def open_signal_waits(self, signal_name: str) -> list[StepAttempt]:
        rows = await self._rows(Q["open_signal_waits"], (self.namespace, signal_name))
        return [codec.step_from_row(row) for row in rows]

    async def live_children(self, parent_ids: list[str]) -> list[str]:
        rows = await self._rows(Q["live_children"], (self.namespace, codec.dumps(parent_ids)))
        return [row["id"] for row in rows]

    async def claim_signal_key(self, key: str, signal_name: str) -> bool:
        rows = await self._conn.execute_fetchall(
            Q["claim_signal_key"], (self.namespace, signal_name, key, ts(self.now))
        )
        return bool(rows)

    async def signal_send(self, key: str, signal_name: str) -> list[str]:
        rows = await self._rows(Q["get_signal_send"], (self.namespace, signal_name, key))
        return list(msgspec.json.decode(rows[0]["delivered_to"])) if rows else []

    async def record_signal_send(self, key: str, signal_name: str, run_ids: list[str]) -> None:
        await self._conn.execute(
            Q["put_signal_send"], (codec.dumps(run_ids), self.namespace, signal_name, key)
        )
