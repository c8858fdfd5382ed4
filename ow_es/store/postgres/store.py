"""PostgreSQL adapter: psycopg 3 with a bounded psycopg-pool; driver errors become ow-es errors
(``errors.translate``)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar, cast

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from ow_es.config import redact
from ow_es.durations import utcnow
from ow_es.errors import ConcurrencyError, SchemaMismatch, StoreUnavailable
from ow_es.models import Event, RunPage, StepAttempt, WorkflowRun
from ow_es.store import codec
from ow_es.store.failure import first_line
from ow_es.store.named_queries import load
from ow_es.store.port import Backlog, LogBatch, MinuteCount, PoolStats, Primitives, WorkflowKey
from ow_es.store.postgres import schema
from ow_es.store.postgres.claim import OneStatementClaims
from ow_es.store.postgres.errors import RETRYABLE, translate
from ow_es.store.postgres.limits import PostgresLimits
from ow_es.store.postgres.registry import PostgresRegistry
from ow_es.store.postgres.retention import PostgresRetention
from ow_es.store.postgres.schedules import PostgresSchedules
from ow_es.store.postgres.single import OneStatementAppends
from ow_es.store.postgres.transaction import PostgresTransaction
from ow_es.store.postgres.wake import Channels, PostgresWakeChannel
from ow_es.store.rebuild_port import Rebuilder
from ow_es.store.tables import TxTime
from ow_es.transient import retrying, unavailable

Q = load("postgres")
T = TypeVar("T")
log = logging.getLogger("ow_es.store")


class _Retry(Exception):
    """A transaction lost a deadlock; it is run again from the start."""


class NotCommitted(StoreUnavailable):
    """The connection failed before the commit was sent: nothing was written."""


def _lock_key(purpose: str, schema: str) -> int:
    digest = hashlib.sha256(f"ow_es.{purpose}.{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresStore:
    dialect = "postgres"

    def __init__(
        self,
        url: str,
        namespace: str,
        schema: str,
        *,
        pool_size: int = 10,
        retry_seconds: float = 10.0,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.schema = schema
        self.channels = Channels.of(schema, namespace)
        self.gate_key = _lock_key("gate", schema)  # appends shared, reproject exclusive
        self._migrate_key = _lock_key("migrate", schema)
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._wake: PostgresWakeChannel | None = None
        self._checking: asyncio.Future[None] | None = None
        self.retry_seconds = retry_seconds  # how long transient failures are retried
        self.single = OneStatementAppends(
            self.connection, self.gate_key, self.channels, OneStatementClaims(self)
        )
        # The adapter's parts beside the log: who serves what, retention, schedules, limits.
        self.registry = PostgresRegistry(self)
        self.retention = PostgresRetention(self)
        self.schedules = PostgresSchedules(self)
        self.limits = PostgresLimits(self)

    # -- lifecycle -------------------------------------------------------------------------

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        set_json_loads(msgspec.json.decode, conn)

    def _session_options(self) -> str:
        """The pool's session settings, sent with the connection's startup packet: a new
        connection is ready without a round trip of its own (which matters when connections
        are cut often: each one is usable the moment it is open). No JIT: ow-es's statements
        are short, and compiling one whose estimate looks big costs tens of milliseconds.
        Generic plans: re-planning the claim cost more than running it (see query plan tests)."""
        given = conninfo_to_dict(self.url).get("options") or ""
        ours = (
            f'-c search_path="{self.schema}" -c TimeZone=UTC'  # a validated identifier
            " -c jit=off -c plan_cache_mode=force_generic_plan"
        )
        return f"{given} {ours}".strip()

    async def open(self, *, migrate: bool = True) -> None:
        try:
            # Reachability and migrations first, on a plain connection, so errors are clear.
            async with await self._connect() as conn:
                if migrate:
                    await schema.migrate(conn, self.schema, self._migrate_key, dry_run=False)
                else:
                    await schema.check_version(conn, self.schema)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot use PostgreSQL at {redact(self.url)}: {first_line(exc)}"
            ) from None
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True, "options": self._session_options()},
            configure=self._configure,
            open=False,
        )
        await self._pool.open(wait=True, timeout=30)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10)

    async def close(self) -> None:
        if self._checking is not None:
            self._checking.cancel()
            self._checking = None
        if self._wake is not None:
            await self._wake.stop()
            self._wake = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def connection(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (autocommit); driver errors inside become ow-es errors."""
        if self._pool is None:
            raise StoreUnavailable("the client is not connected (call connect() first)")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise translate(exc, what) from None

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        try:
            async with await self._connect() as conn:
                return await schema.migrate(conn, self.schema, self._migrate_key, dry_run=dry_run)
        except psycopg.Error as exc:
            raise translate(exc, "migrating") from None

    async def schema_version(self) -> int:
        async with self.connection("reading the schema version") as conn:
            return await schema.applied_version(conn, self.schema)

    # -- writes ----------------------------------------------------------------------------

    async def transaction(self, what: str, fn: Callable[[Primitives], Awaitable[T]]) -> T:
        """Run ``fn`` in one pipelined write transaction holding the reproject gate shared;
        its notifications go with the commit. Run again from the start after a lost deadlock,
        and after a connection failure that came before the commit was sent (nothing can have
        been written then); a failure during the commit leaves the outcome unknown and is
        raised as ``StoreUnavailable``."""
        return await self._retrying(what, lambda: self._transaction(what, fn), idempotent=False)

    async def _transaction(self, what: str, fn: Callable[[Primitives], Awaitable[T]]) -> T:
        for _ in range(5):
            committing = False
            try:
                async with self.connection(what) as conn:
                    try:
                        async with conn.pipeline(), conn.transaction():
                            begin = await conn.execute(
                                Q["begin_append"], {"gate": self.gate_key}, prepare=True
                            )
                            tx = PostgresTransaction(conn, self.namespace, begin, TxTime(utcnow()))
                            result = await fn(tx)
                            await tx.send_notifications(self.channels)
                            committing = True
                        return result
                    except RETRYABLE as exc:
                        raise _Retry() from exc
            except _Retry:
                continue
            except StoreUnavailable as exc:
                if committing or isinstance(exc, SchemaMismatch):
                    raise
                raise NotCommitted(str(exc)) from None
        raise ConcurrencyError(f"{what}: kept deadlocking; gave up after 5 tries")

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        """``op`` again while it fails in a way that is safe to repeat: any connection failure
        of an idempotent ``op``, a failure before the commit was sent for a write. The pool's
        idle connections are checked after a failure, so the dead ones a dropped server leaves
        behind are not handed out again."""

        def safe(exc: StoreUnavailable) -> bool:
            return unavailable(exc) and (idempotent or isinstance(exc, NotCommitted))

        return await retrying(
            f"PostgreSQL {what}",
            op,
            seconds=self.retry_seconds,
            safe=safe,
            on_failure=self._check_pool,
        )

    def _check_pool(self) -> None:
        if self._pool is not None and (self._checking is None or self._checking.done()):
            self._checking = asyncio.ensure_future(self._pool.check())

    async def heartbeat(self, claims: dict[str, str], lease_seconds: float) -> set[str]:
        if not claims:
            return set()
        return await self._retrying(
            "extending leases", lambda: self._heartbeat(claims, lease_seconds), idempotent=True
        )

    async def _heartbeat(self, claims: dict[str, str], lease_seconds: float) -> set[str]:
        async with self.connection("extending leases") as conn, conn.transaction():
            # Heartbeats take the reproject gate like appends do.
            await conn.execute(Q["begin_append"], {"gate": self.gate_key}, prepare=True)
            cur = await conn.execute(
                Q["heartbeat"],
                {
                    "ns": self.namespace,
                    "lease": lease_seconds,
                    "ids": list(claims),
                    "tokens": list(claims.values()),
                },
            )
            return {row[0] for row in await cur.fetchall()}

    def _workflow_params(self, workflows: Sequence[WorkflowKey]) -> dict[str, Any]:
        return {
            "ns": self.namespace,
            "names": sorted({name for name, _ in workflows}),
            "pairs_names": [name for name, _ in workflows],
            "pairs_versions": [version or "" for _, version in workflows],
        }

    async def next_wake_at(self, workflows: Sequence[WorkflowKey]) -> datetime | None:
        if not workflows:
            return None
        async with self.connection("reading timers") as conn:
            cur = await conn.execute(Q["next_wake_at"], self._workflow_params(workflows))
            row = await cur.fetchone()
            return cast(datetime | None, row[0] if row else None)

    # -- reads -----------------------------------------------------------------------------

    async def fetch(self, query: str, params: dict[str, Any], what: str) -> list[dict[str, Any]]:
        """Rows of a read (any statement whose repeat is harmless), retried after a
        connection failure."""

        async def once() -> list[dict[str, Any]]:
            async with self.connection(what) as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(cast(Any, query), {"ns": self.namespace, **params})
                return await cur.fetchall()

        return await self._retrying(what, once, idempotent=True)

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        rows = await self.fetch(Q["get_run"], {"id": run_id}, "reading a run")
        return codec.run_from_row(rows[0]) if rows else None

    async def list_runs(
        self, *, status: str | None, workflow_name: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        after = codec.decode_cursor(cursor) if cursor else (None, None)
        rows = await self.fetch(
            Q["list_runs"],
            {
                "status": status,
                "workflow": workflow_name,
                "after_created": after[0],
                "after_id": after[1],
                "limit": limit + 1,
            },
            "listing runs",
        )
        return codec.page_of([codec.run_from_row(r) for r in rows], limit)

    async def list_children(self, run_id: str) -> list[WorkflowRun]:
        rows = await self.fetch(Q["list_children"], {"id": run_id}, "listing children")
        return [codec.run_from_row(r) for r in rows]

    async def step_attempts(self, run_id: str) -> list[StepAttempt]:
        rows = await self.fetch(Q["step_attempts"], {"id": run_id}, "reading steps")
        return [codec.step_from_row(r) for r in rows]

    async def read_run_events(self, run_id: str, after: int = 0) -> list[Event]:
        rows = await self.fetch(Q["run_events"], {"id": run_id, "after": after}, "reading events")
        return [codec.event_from_row(r) for r in rows]

    async def read_log(self, after: str | None, limit: int, *, barrier: bool = True) -> LogBatch:
        if after is None and barrier:
            await self._check_tx_ids()  # a new reader: make sure it cannot stall forever
        tx, pos = ("0", 0) if after is None else _split_cursor(after)
        rows = await self.fetch(
            Q["read_log" if barrier else "read_log_unguarded"],
            {"tx": tx, "pos": pos, "limit": limit},
            "reading the log",
        )
        cursor = after
        if rows:
            cursor = f"{rows[-1]['tx_text']}:{rows[-1]['position']}"
        for row in rows:
            del row["tx_text"]
        return LogBatch(events=[codec.event_from_row(r) for r in rows], cursor=cursor)

    async def _check_tx_ids(self) -> None:
        """Events restored by a logical dump into another cluster keep transaction ids ahead of
        its counter; the barrier would hold a reader back until the counter passes them."""
        rows = await self.fetch(Q["tx_ids_ahead"], {}, "checking transaction ids")
        if rows and rows[0]["ahead"]:
            raise StoreUnavailable(
                f"the event log holds transaction ids up to {rows[0]['newest']}, ahead of this"
                f" cluster's next id {rows[0]['next']} (restored from a logical dump?): log"
                " readers would stall until the cluster's counter passes them"
            )

    async def log_lag(self) -> float:
        """Seconds the oldest transaction still in progress in the cluster has been open: how
        far the log readers' barrier may be held back."""
        rows = await self.fetch(Q["log_lag"], {}, "measuring the log lag")
        return float(rows[0]["lag"]) if rows else 0.0

    async def count_runs(self) -> dict[tuple[str, str], int]:
        rows = await self.fetch(Q["count_runs"], {}, "counting runs")
        return {(r["workflow_name"], r["status"]): int(r["n"]) for r in rows}

    def rebuilder(self) -> Rebuilder:
        from ow_es.store.postgres.rebuild import PostgresRebuilder

        return PostgresRebuilder(self)

    def wake_channel(self) -> PostgresWakeChannel:
        if self._wake is None:
            self._wake = PostgresWakeChannel(self.url, self.channels)
        return self._wake

    # -- monitoring (dashboard, metrics)

    async def ready_backlog(self) -> Backlog:
        rows = await self.fetch(Q["ready_backlog"], {}, "measuring the backlog")
        return Backlog(ready=int(rows[0]["ready"]), oldest_age_seconds=float(rows[0]["oldest_age"]))

    async def count_unowned(self) -> int:
        rows = await self.fetch(Q["count_unowned"], {}, "counting unowned runs")
        return int(rows[0]["n"])

    async def runs_per_minute(self, minutes: int) -> list[MinuteCount]:
        rows = await self.fetch(Q["runs_per_minute"], {"minutes": minutes}, "counting runs")
        return [
            MinuteCount(minute=r["minute"], series=r["series"], count=int(r["n"])) for r in rows
        ]

    async def runs_by_key(self, idempotency_key: str) -> list[WorkflowRun]:
        rows = await self.fetch(Q["runs_by_key"], {"key": idempotency_key}, "finding runs")
        return [codec.run_from_row(r) for r in rows]

    async def log_tail(self) -> str | None:
        await self._check_tx_ids()  # a new reader: make sure it cannot stall forever
        rows = await self.fetch(Q["log_tail"], {}, "reading the log's end")
        return f"{rows[0]['tx_text']}:{rows[0]['position']}" if rows else None

    async def events_at(self, keys: Sequence[tuple[str, int]]) -> list[Event]:
        if not keys:
            return []
        params = {"ids": [run_id for run_id, _ in keys], "seqs": [seq for _, seq in keys]}
        rows = await self.fetch(Q["events_at"], params, "reading events")
        return [codec.event_from_row(r) for r in rows]

    def pool_stats(self) -> PoolStats | None:
        if self._pool is None:
            return None
        stats = self._pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        return PoolStats(in_use=max(size - idle, 0), idle=idle)


def _split_cursor(cursor: str) -> tuple[str, int]:
    tx, _, pos = cursor.partition(":")
    if not tx.isdigit() or not pos.isdigit():
        raise ValueError(f"invalid log cursor {cursor!r}")
    return tx, int(pos)
