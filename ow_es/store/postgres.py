"""PostgreSQL adapter: psycopg 3 with a bounded psycopg-pool; driver errors become ow-es errors."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from ow_es import events as ev
from ow_es.config import redact
from ow_es.errors import ConcurrencyError, OwEsError, StoreUnavailable
from ow_es.models import Event, RunPage, StepAttempt, WorkflowRun
from ow_es.store import codec, migrator
from ow_es.store.base import Appended, AppendRequest, LogBatch, Outcome, WorkflowKey
from ow_es.store.planner import (
    Plan,
    claim_requests,
    claimed_runs,
    is_create,
    merge,
    plan_create,
    plan_updates,
    split_rounds,
)
from ow_es.store.pg_wake import PostgresWakeChannel
from ow_es.store.queries import load

Q = load("postgres")
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class _Retry(Exception):
    """A transaction lost a deadlock; it is run again from the start."""


def channel_names(schema: str, namespace: str) -> tuple[str, str]:
    """Short, safe channel names: pg_notify rejects names over 63 bytes."""
    digest = hashlib.sha256(f"{schema}\0{namespace}".encode()).hexdigest()[:24]
    return f"owes_{digest}_ready", f"owes_{digest}_done"


def _lock_key(purpose: str, schema: str) -> int:
    digest = hashlib.sha256(f"ow_es.{purpose}.{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _run_params(run: WorkflowRun) -> tuple[Any, ...]:
    d = codec.dumps_or_null
    return (
        run.namespace_id, run.id, run.workflow_name, run.version, run.status,
        d(run.input), d(run.output), d(run.error), run.attempts,
        run.idempotency_key, run.parent_run_id, run.parent_step_name, run.worker_id,
        run.claim_token, run.lease_until, run.available_at, run.deadline_at,
        d(run.waiting_for), run.seq, run.created_at, run.started_at, run.finished_at,
        run.updated_at,
    )  # fmt: skip


def _update_params(run: WorkflowRun) -> tuple[Any, ...]:
    p = _run_params(run)
    return (*p[2:], run.namespace_id, run.id)


def _step_params(step: StepAttempt) -> tuple[Any, ...]:
    d = codec.dumps_or_null
    return (
        step.namespace_id, step.run_id, step.step_name, step.attempt, step.kind, step.status,
        d(step.input), d(step.output), d(step.error), step.child_run_id, step.signal_name,
        step.started_at, step.finished_at,
    )  # fmt: skip


def _wrap(exc: psycopg.Error, what: str) -> OwEsError:
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailable(f"PostgreSQL unavailable while {what}: {_first_line(exc)}")
    return OwEsError(f"PostgreSQL error while {what}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresStore:
    backend = "postgres"

    def __init__(self, url: str, namespace: str, schema: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.namespace = namespace
        self.schema = schema
        self.ready_channel, self.done_channel = channel_names(schema, namespace)
        self._gate_key = _lock_key("gate", schema)
        self._migrate_key = _lock_key("migrate", schema)
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._wake: PostgresWakeChannel | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        set_json_loads(msgspec.json.decode, conn)
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        await conn.execute("SET TIME ZONE 'UTC'")

    async def open(self, *, migrate: bool = True) -> None:
        try:
            # Reachability and migrations first, on a plain connection, so errors are clear.
            async with await self._connect() as conn:
                if migrate:
                    await self._migrate(conn, dry_run=False)
                else:
                    await self._check_version(conn)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot use PostgreSQL at {redact(self.url)}: {_first_line(exc)}"
            ) from None
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True},
            configure=self._configure,
            open=False,
        )
        await self._pool.open(wait=True, timeout=30)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10)

    async def close(self) -> None:
        if self._wake is not None:
            await self._wake.stop()
            self._wake = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreUnavailable("the client is not connected (call connect() first)")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise _wrap(exc, what) from None

    # -- migrations ------------------------------------------------------------------------

    async def _applied_version(self, conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", [f"{self.schema_ident()}.schema_migrations"]
        )
        row = await cur.fetchone()
        if not row or not row[0]:
            return 0
        cur = await conn.execute(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(
                sql.Identifier(self.schema)
            )
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    def schema_ident(self) -> str:
        return sql.Identifier(self.schema).as_string(None)

    async def _check_version(self, conn: psycopg.AsyncConnection[Any]) -> int:
        applied = await self._applied_version(conn)
        migrator.pending("postgres", applied)  # raises when the database is newer
        return applied

    async def _migrate(self, conn: psycopg.AsyncConnection[Any], *, dry_run: bool) -> list[str]:
        if not migrator.pending("postgres", await self._applied_version(conn)):
            return []
        if dry_run:
            return [m.name for m in migrator.pending("postgres", await self._applied_version(conn))]
        schema = sql.Identifier(self.schema)
        async with conn.transaction():
            # Many processes may start at once: one migrates, the others wait and find it done.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._migrate_key])
            cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema])
            if await cur.fetchone() is None:
                await conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            todo = migrator.pending("postgres", await self._applied_version(conn))
            for migration in todo:
                await conn.execute(cast(Any, migration.sql))
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    [migration.version, migration.name],
                )
        return [m.name for m in todo]

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        try:
            async with await self._connect() as conn:
                return await self._migrate(conn, dry_run=dry_run)
        except psycopg.Error as exc:
            raise _wrap(exc, "migrating") from None

    async def schema_version(self) -> int:
        async with self._conn("reading the schema version") as conn:
            return await self._applied_version(conn)

    # -- appends ---------------------------------------------------------------------------

    async def append(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        batch = list(enumerate(requests))
        plan = await self._retrying(
            "appending events", lambda conn, now: self._plan_all(conn, now, batch)
        )
        return [plan.outcomes[i] for i in range(len(batch))]

    async def _retrying(
        self,
        what: str,
        planner: Callable[[psycopg.AsyncConnection[Any], datetime], Awaitable[Plan]],
    ) -> Plan:
        """Plan and write in one transaction, again from the start after a lost deadlock."""
        for _ in range(5):
            try:
                async with self._conn(what) as conn:
                    try:
                        async with conn.transaction():
                            plan = await planner(conn, await self._begin(conn))
                            await self._notify(conn, plan)
                            return plan
                    except _RETRYABLE as exc:
                        raise _Retry() from exc
            except _Retry:
                continue
        raise ConcurrencyError(f"{what}: kept deadlocking; gave up after 5 tries")

    async def _begin(self, conn: psycopg.AsyncConnection[Any]) -> datetime:
        cur = await conn.execute(Q["begin_append"], {"gate": self._gate_key}, prepare=True)
        row = await cur.fetchone()
        assert row is not None
        return cast(datetime, row[1])

    async def _plan_all(
        self,
        conn: psycopg.AsyncConnection[Any],
        now: datetime,
        requests: list[tuple[int, AppendRequest]],
    ) -> Plan:
        plan = Plan()
        pending = requests
        next_index = len(requests)
        while pending:
            for round_ in split_rounds(pending):
                merge(plan, await self._plan_round(conn, now, round_))
                # Rows locked by a later round must include this round's writes.
                await self._write(conn, plan)
            # Follow-ups (a child's end told to its parent) go in the same transaction.
            follow = plan.follow_ups
            plan.follow_ups = []
            pending = [(next_index + i, r) for i, r in enumerate(follow)]
            next_index += len(follow)
        return plan

    async def _plan_round(
        self,
        conn: psycopg.AsyncConnection[Any],
        now: datetime,
        round_: list[tuple[int, AppendRequest]],
    ) -> Plan:
        plan = Plan()
        updates = [(i, r) for i, r in round_ if not is_create(r)]
        for index, request in round_:
            if is_create(request):
                created, run = plan_create(self.namespace, now, request)
                cur = await conn.execute(Q["insert_run"], _run_params(run), prepare=True)
                if await cur.fetchone() is None:
                    data = cast(ev.RunCreated, request.events[0])
                    existing = await self._find_by_key(conn, run.workflow_name, data)
                    plan.outcomes[index] = Appended(run=existing, created=False)
                    continue
                created.inserted_runs.clear()  # the row is in already
                created.outcomes[index] = Appended(run=run, created=True, first_seq=1)
                merge(plan, created)
        if updates:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                Q["lock_runs"], {"ns": self.namespace, "ids": [r.run_id for _, r in updates]}
            )
            rows = {row["id"]: codec.run_from_row(row) for row in await cur.fetchall()}
            merge(plan, plan_updates(self.namespace, now, updates, rows))
        return plan

    async def _find_by_key(
        self, conn: psycopg.AsyncConnection[Any], name: str, data: ev.RunCreated
    ) -> WorkflowRun:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            Q["find_by_key"], {"ns": self.namespace, "name": name, "key": data.idempotency_key}
        )
        row = await cur.fetchone()
        if row is None:
            raise ConcurrencyError("idempotent start clashed with a run that vanished; retry")
        return codec.run_from_row(row)

    async def _write(self, conn: psycopg.AsyncConnection[Any], plan: Plan) -> None:
        """Write the rows and events ``plan`` holds, then empty those lists."""
        async with conn.pipeline():
            cur = conn.cursor()
            if plan.events:
                await cur.executemany(
                    Q["insert_event"],
                    [
                        (e.namespace_id, e.run_id, e.seq, e.data.TYPE, e.data.SCHEMA_VERSION,
                         codec.dumps(e.data), e.created_at)
                        for e in plan.events
                    ],
                )  # fmt: skip
            if plan.updated_runs:
                await cur.executemany(
                    Q["update_run"], [_update_params(r) for r in plan.updated_runs]
                )
            if plan.steps:
                await cur.executemany(Q["upsert_step"], [_step_params(s) for s in plan.steps])
        plan.events, plan.updated_runs, plan.steps = [], [], []

    async def _notify(self, conn: psycopg.AsyncConnection[Any], plan: Plan) -> None:
        """One NOTIFY per channel and transaction: NOTIFY serialises commits cluster-wide."""
        async with conn.pipeline():
            cur = conn.cursor()
            if plan.ready:
                await cur.execute("SELECT pg_notify(%s, '')", [self.ready_channel])
            for chunk in _chunks(plan.done):
                await cur.execute("SELECT pg_notify(%s, %s)", [self.done_channel, chunk])

    # -- claims and leases -----------------------------------------------------------------

    def _workflow_params(self, workflows: Sequence[WorkflowKey]) -> dict[str, Any]:
        return {
            "ns": self.namespace,
            "names": [name for name, _ in workflows],
            "versions": [version or "" for _, version in workflows],
        }

    async def claim(
        self,
        worker_id: str,
        workflows: Sequence[WorkflowKey],
        limit: int,
        lease_seconds: float,
    ) -> list[WorkflowRun]:
        if limit <= 0 or not workflows:
            return []
        count = 0

        async def plan_claims(conn: psycopg.AsyncConnection[Any], now: datetime) -> Plan:
            nonlocal count
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                Q["claim_ready"], {**self._workflow_params(workflows), "limit": limit}
            )
            rows = [codec.run_from_row(row) for row in await cur.fetchall()]
            requests = claim_requests(rows, worker_id, now, lease_seconds)
            count = len(requests)
            return await self._plan_all(conn, now, list(enumerate(requests)))

        plan = await self._retrying("claiming runs", plan_claims)
        return claimed_runs(plan, count)

    async def heartbeat(self, claims: dict[str, str], lease_seconds: float) -> set[str]:
        if not claims:
            return set()
        async with self._conn("extending leases") as conn, conn.transaction():
            await self._begin(conn)
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

    async def next_wake_at(self, workflows: Sequence[WorkflowKey]) -> datetime | None:
        if not workflows:
            return None
        async with self._conn("reading timers") as conn:
            cur = await conn.execute(Q["next_wake_at"], self._workflow_params(workflows))
            row = await cur.fetchone()
            return cast(datetime | None, row[0] if row else None)

    # -- reads -----------------------------------------------------------------------------

    async def _fetch(self, query: str, params: dict[str, Any], what: str) -> list[dict[str, Any]]:
        async with self._conn(what) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(cast(Any, query), {"ns": self.namespace, **params})
            return await cur.fetchall()

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        rows = await self._fetch(Q["get_run"], {"id": run_id}, "reading a run")
        return codec.run_from_row(rows[0]) if rows else None

    async def find_by_idempotency_key(self, workflow_name: str, key: str) -> WorkflowRun | None:
        rows = await self._fetch(
            Q["find_by_key"], {"name": workflow_name, "key": key}, "reading a run"
        )
        return codec.run_from_row(rows[0]) if rows else None

    async def list_runs(
        self, *, status: str | None, workflow_name: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        after = codec.decode_cursor(cursor) if cursor else (None, None)
        rows = await self._fetch(
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
        rows = await self._fetch(Q["list_children"], {"id": run_id}, "listing children")
        return [codec.run_from_row(r) for r in rows]

    async def step_attempts(self, run_id: str) -> list[StepAttempt]:
        rows = await self._fetch(Q["step_attempts"], {"id": run_id}, "reading steps")
        return [codec.step_from_row(r) for r in rows]

    async def read_run_events(self, run_id: str) -> list[Event]:
        rows = await self._fetch(Q["run_events"], {"id": run_id}, "reading events")
        return [codec.event_from_row(r) for r in rows]

    async def read_log(self, after: str | None, limit: int) -> LogBatch:
        tx, pos = ("0", 0) if after is None else _split_cursor(after)
        rows = await self._fetch(
            Q["read_log"], {"tx": tx, "pos": pos, "limit": limit}, "reading the log"
        )
        cursor = after
        if rows:
            cursor = f"{rows[-1]['tx_id']}:{rows[-1]['position']}"
        for row in rows:
            del row["tx_id"]
        return LogBatch(events=[codec.event_from_row(r) for r in rows], cursor=cursor)

    async def count_runs(self) -> dict[tuple[str, str], int]:
        rows = await self._fetch(Q["count_runs"], {}, "counting runs")
        return {(r["workflow_name"], r["status"]): int(r["n"]) for r in rows}

    def wake_channel(self) -> PostgresWakeChannel:
        if self._wake is None:
            self._wake = PostgresWakeChannel(self.url, self.ready_channel, self.done_channel)
        return self._wake


def _split_cursor(cursor: str) -> tuple[str, int]:
    tx, _, pos = cursor.partition(":")
    if not tx.isdigit() or not pos.isdigit():
        raise ValueError(f"invalid log cursor {cursor!r}")
    return tx, int(pos)


def _chunks(ids: list[str], limit: int = 7000) -> list[str]:
    """NOTIFY payloads are capped near 8000 bytes: split long id lists."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for run_id in ids:
        if current and size + len(run_id) + 1 > limit:
            chunks.append(",".join(current))
            current, size = [], 0
        current.append(run_id)
        size += len(run_id) + 1
    if current:
        chunks.append(",".join(current))
    return chunks
