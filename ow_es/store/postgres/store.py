"""PostgreSQL adapter: psycopg 3 with a bounded psycopg-pool; driver errors become ow-es errors."""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar, cast

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from ow_es.config import redact
from ow_es.errors import ConcurrencyError, OwEsError, StoreUnavailable
from ow_es.models import Event, RunPage, StepAttempt, WorkflowRun
from ow_es.reproject import Rebuilder
from ow_es.store import codec, migrator
from ow_es.store.named_queries import load
from ow_es.store.planner import Plan
from ow_es.store.port import Appended, AppendRequest, LogBatch, Outcome, WorkflowKey
from ow_es.store.postgres import single as pg_single
from ow_es.store.postgres.wake import PostgresWakeChannel
from ow_es.store.tx import Transaction, TransactionalStore

Q = load("postgres")
T = TypeVar("T")
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
    return codec.run_values(run)


def _insert_params(run: WorkflowRun) -> tuple[Any, ...]:
    """Without created_at and updated_at: the insert uses the transaction's now()."""
    params = _run_params(run)
    return (*params[:19], *params[20:22])


@functools.cache
def _update_statement(columns: tuple[str, ...]) -> sql.Composed:
    """UPDATE of just these columns (one prepared statement per shape of change)."""
    assignments = [
        sql.SQL("{} = %s::jsonb" if c in codec.JSON_RUN_COLUMNS else "{} = %s").format(
            sql.Identifier(c)
        )
        for c in columns
    ]
    return sql.SQL("UPDATE workflow_runs SET {} WHERE namespace_id = %s AND id = %s").format(
        sql.SQL(", ").join(assignments)
    )


def _step_params(step: StepAttempt) -> tuple[Any, ...]:
    return codec.step_values(step)


def _wrap(exc: psycopg.Error, what: str) -> OwEsError:
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailable(f"PostgreSQL unavailable while {what}: {_first_line(exc)}")
    return OwEsError(f"PostgreSQL error while {what}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresStore(TransactionalStore):
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

    # -- writes ----------------------------------------------------------------------------

    async def run(self, what: str, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``fn`` in one write transaction, again from the start after a lost deadlock.

        The transaction runs in pipeline mode: statements are sent as they are issued and the
        client waits only where it needs a result, so an append costs two round trips (lock
        and read the rows; write, notify and commit)."""
        for _ in range(5):
            try:
                async with self._conn(what) as conn:
                    try:
                        async with conn.pipeline(), conn.transaction():
                            begin = await conn.execute(
                                Q["begin_append"], {"gate": self._gate_key}, prepare=True
                            )
                            tx = PostgresTransaction(self, conn, begin)
                            result = await fn(tx)
                            await tx.notify()
                        return result
                    except _RETRYABLE as exc:
                        raise _Retry() from exc
            except _Retry:
                continue
        raise ConcurrencyError(f"{what}: kept deadlocking; gave up after 5 tries")

    async def append(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        """One-statement appends where they can decide (see ``pg_single``); the general
        transaction for the rest, and for those whose statement wrote nothing."""
        singles = _singles(self.namespace, requests)
        outcomes: dict[int, Outcome] = {}
        if singles:
            outcomes.update(await self._append_singles(singles, requests))
        rest = [i for i in range(len(requests)) if i not in outcomes]
        if rest:
            general = await super().append([requests[i] for i in rest])
            outcomes.update(zip(rest, general, strict=True))
        return [outcomes[i] for i in range(len(requests))]

    async def _append_singles(
        self, singles: dict[int, pg_single.Single], requests: Sequence[AppendRequest]
    ) -> dict[int, Appended]:
        """One statement per request: alone in autocommit, or several in one pipelined
        transaction (in run id order, as rows are locked everywhere). Returns the outcomes of
        those that wrote; a lost deadlock leaves them all to the general path."""
        channels = (self.ready_channel, self.done_channel)
        statements = [
            (i, *pg_single.statement(single, self._gate_key, channels, requests[i].claim_token))
            for i, single in sorted(singles.items(), key=lambda item: requests[item[0]].run_id)
        ]
        async with self._conn("appending events") as conn:
            try:
                if len(statements) == 1:
                    ((index, query, params),) = statements
                    cursors = [(index, await conn.execute(cast(Any, query), params, prepare=True))]
                else:
                    async with conn.pipeline(), conn.transaction():
                        cursors = [
                            (i, await conn.execute(cast(Any, query), params, prepare=True))
                            for i, query, params in statements
                        ]
            except _RETRYABLE:
                return {}
            outcomes: dict[int, Appended] = {}
            for index, cur in cursors:
                row = await cur.fetchone()
                assert row is not None
                if row[0]:
                    outcomes[index] = pg_single.outcome(singles[index], row[1])
        return outcomes

    def _workflow_params(self, workflows: Sequence[WorkflowKey]) -> dict[str, Any]:
        return {
            "ns": self.namespace,
            "names": [name for name, _ in workflows],
            "versions": [version or "" for _, version in workflows],
        }

    async def heartbeat(self, claims: dict[str, str], lease_seconds: float) -> set[str]:
        if not claims:
            return set()
        async with self._conn("extending leases") as conn, conn.transaction():
            # Heartbeats take the reproject gate like appends do.
            await conn.execute(Q["begin_append"], {"gate": self._gate_key}, prepare=True)
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

    async def read_log(self, after: str | None, limit: int, *, barrier: bool = True) -> LogBatch:
        if after is None and barrier:
            await self._check_tx_ids()  # a new reader: make sure it cannot stall forever
        tx, pos = ("0", 0) if after is None else _split_cursor(after)
        rows = await self._fetch(
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
        rows = await self._fetch(Q["tx_ids_ahead"], {}, "checking transaction ids")
        if rows and rows[0]["ahead"]:
            raise StoreUnavailable(
                f"the event log holds transaction ids up to {rows[0]['newest']}, ahead of this"
                f" cluster's next id {rows[0]['next']} (restored from a logical dump?): log"
                " readers would stall until the cluster's counter passes them"
            )

    async def log_lag(self) -> float:
        """Seconds the oldest transaction still in progress in the cluster has been open: how
        far the log readers' barrier may be held back."""
        rows = await self._fetch(Q["log_lag"], {}, "measuring the log lag")
        return float(rows[0]["lag"]) if rows else 0.0

    async def count_runs(self) -> dict[tuple[str, str], int]:
        rows = await self._fetch(Q["count_runs"], {}, "counting runs")
        return {(r["workflow_name"], r["status"]): int(r["n"]) for r in rows}

    def rebuilder(self) -> Rebuilder:
        from ow_es.store.postgres.rebuild import PostgresRebuilder

        return PostgresRebuilder(self)

    def wake_channel(self) -> PostgresWakeChannel:
        if self._wake is None:
            self._wake = PostgresWakeChannel(self.url, self.ready_channel, self.done_channel)
        return self._wake


def _singles(namespace: str, requests: Sequence[AppendRequest]) -> dict[int, pg_single.Single]:
    """The requests that can be one statement each; a run named twice in the batch is left
    to the general path, which keeps its appends in order."""
    counts = Counter(r.run_id for r in requests)
    singles = {}
    for index, request in enumerate(requests):
        if counts[request.run_id] == 1:
            single = pg_single.prepare(namespace, request)
            if single is not None:
                singles[index] = single
    return singles


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


class PostgresTransaction(Transaction):
    def __init__(
        self,
        store: PostgresStore,
        conn: psycopg.AsyncConnection[Any],
        begin: psycopg.AsyncCursor[Any],
    ) -> None:
        super().__init__(store.namespace)
        self._store = store
        self._conn = conn
        self._begin = begin
        self._now: datetime | None = None

    async def clock(self) -> datetime:
        if self._now is None:  # read lazily: by then the pipeline has usually synced
            row = await self._begin.fetchone()
            assert row is not None
            self._now = cast(datetime, row[1])
        return self._now

    async def _rows(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        cur = self._conn.cursor(row_factory=dict_row)
        await cur.execute(cast(Any, query), {"ns": self.namespace, **params})
        return await cur.fetchall()

    async def insert_runs(self, runs: list[WorkflowRun]) -> set[str]:
        cur = self._conn.cursor()
        await cur.executemany(Q["insert_run"], [_insert_params(r) for r in runs], returning=True)
        inserted: set[str] = set()
        while True:
            inserted.update(row[0] for row in await cur.fetchall())
            if not cur.nextset():
                return inserted

    async def find_by_key(self, workflow_name: str, key: str | None) -> WorkflowRun | None:
        rows = await self._rows(Q["find_by_key"], {"name": workflow_name, "key": key})
        return codec.run_from_row(rows[0]) if rows else None

    async def lock_runs(self, run_ids: list[str]) -> dict[str, WorkflowRun]:
        rows = await self._rows(Q["lock_runs"], {"ids": run_ids})
        return {row["id"]: codec.run_from_row(row) for row in rows}

    async def write(self, plan: Plan) -> None:
        if not (plan.events or plan.updated_runs or plan.steps):
            return
        cur = self._conn.cursor()
        # Queued in the transaction's pipeline; sent with the next sync.
        if plan.events:
            await cur.executemany(Q["insert_event"], [codec.event_values(e) for e in plan.events])
        for columns, params in codec.run_changes(plan.updated_runs).items():
            await cur.executemany(_update_statement(columns), params)
        if plan.steps:
            await cur.executemany(Q["upsert_step"], [_step_params(s) for s in plan.steps])

    async def notify(self) -> None:
        """One NOTIFY per channel and transaction: NOTIFY serialises commits cluster-wide."""
        if not (self.ready or self.done):
            return
        cur = self._conn.cursor()
        # Queued; sent with the commit.
        if self.ready:
            await cur.execute("SELECT pg_notify(%s, '')", [self._store.ready_channel])
        for chunk in _chunks(self.done):
            await cur.execute("SELECT pg_notify(%s, %s)", [self._store.done_channel, chunk])

    async def claim_ready(self, workflows: Sequence[WorkflowKey], limit: int) -> list[WorkflowRun]:
        params = {
            "names": sorted({name for name, _ in workflows}),
            "versions": sorted({version for _, version in workflows if version is not None}),
            "unversioned": any(version is None for _, version in workflows),
            "limit": limit,
        }
        # Both queries go out together (pipeline); expired leases only fill what is left.
        due_cur = self._conn.cursor(row_factory=dict_row)
        expired_cur = self._conn.cursor(row_factory=dict_row)
        await due_cur.execute(Q["claim_due"], {"ns": self.namespace, **params}, prepare=True)
        await expired_cur.execute(
            Q["claim_expired"], {"ns": self.namespace, **params}, prepare=True
        )
        rows = [*await due_cur.fetchall(), *await expired_cur.fetchall()]
        served = set(workflows)
        runs = [codec.run_from_row(row) for row in rows]
        return [r for r in runs if (r.workflow_name, r.version) in served][:limit]

    async def open_signal_waits(self, signal_name: str) -> list[StepAttempt]:
        rows = await self._rows(Q["open_signal_waits"], {"signal": signal_name})
        return [codec.step_from_row(row) for row in rows]

    async def live_children(self, parent_ids: list[str]) -> list[str]:
        rows = await self._rows(Q["live_children"], {"ids": parent_ids})
        return [row["id"] for row in rows]

    async def claim_signal_key(self, key: str, signal_name: str) -> bool:
        cur = await self._conn.execute(
            Q["claim_signal_key"], {"ns": self.namespace, "signal": signal_name, "key": key}
        )
        return await cur.fetchone() is not None

    async def signal_send(self, key: str, signal_name: str) -> list[str]:
        rows = await self._rows(Q["get_signal_send"], {"signal": signal_name, "key": key})
        return list(rows[0]["delivered_to"]) if rows else []

    async def record_signal_send(self, key: str, signal_name: str, run_ids: list[str]) -> None:
        await self._conn.execute(
            Q["put_signal_send"],
            {"ns": self.namespace, "key": key, "signal": signal_name, "ids": codec.dumps(run_ids)},
        )
