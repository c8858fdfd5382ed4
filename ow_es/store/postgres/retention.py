"""Retention and archive import on PostgreSQL (see ``retention_port.Retention``).

Each batch is one transaction holding the reproject gate shared, as appends do. Candidate
roots are locked ``FOR UPDATE SKIP LOCKED`` (so concurrent retention processes take different
trees), the rest of each tree too, without waiting: a run someone holds keeps its tree for a
later pass. The event log's trigger lets the deletes through only after ``SET LOCAL
ow_es.allow_event_mutation = 'on'``, which ends with this transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg.rows import dict_row

from ow_es.store import codec, statements, tables
from ow_es.store.named_queries import load
from ow_es.store.retention_port import (
    ArchivedRun,
    ArchiveSink,
    Node,
    SweepResult,
    after_locking,
    deletable,
    group,
    in_namespace,
)
from ow_es.store.tables import EVENTS, RUNS, STEPS

if TYPE_CHECKING:
    from ow_es.store.postgres.store import PostgresStore

Q = load("postgres")
_NODE = "id, parent_run_id, status, finished_at"

# Roots (no parent row) through the workflow_runs_finished index, in (finished_at, id) order.
_ROOTS = f"""
SELECT {_NODE} FROM workflow_runs r
WHERE r.namespace_id = %(ns)s AND r.finished_at IS NOT NULL AND r.finished_at < %(cutoff)s
  AND (r.finished_at, r.id) > (%(after_at)s, %(after_id)s)
  AND r.status IN ('completed', 'failed', 'canceled')
  AND (r.parent_run_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM workflow_runs p
        WHERE p.namespace_id = r.namespace_id AND p.id = r.parent_run_id))
ORDER BY r.finished_at, r.id
LIMIT %(limit)s
"""
_CHILDREN = f"""
SELECT {_NODE} FROM workflow_runs
WHERE namespace_id = %(ns)s AND parent_run_id = ANY(%(ids)s)
"""
_LOCK = f"""
SELECT {_NODE} FROM workflow_runs
WHERE namespace_id = %(ns)s AND id = ANY(%(ids)s)
ORDER BY id FOR UPDATE SKIP LOCKED
"""
_RUNS = "SELECT * FROM workflow_runs WHERE namespace_id = %(ns)s AND id = ANY(%(ids)s)"
_STEPS = """
SELECT * FROM step_attempts WHERE namespace_id = %(ns)s AND run_id = ANY(%(ids)s)
ORDER BY run_id, started_at, step_name, attempt
"""
_EVENTS = """
SELECT namespace_id, run_id, position, seq, type, schema_version, data, created_at
FROM events WHERE namespace_id = %(ns)s AND run_id = ANY(%(ids)s) ORDER BY run_id, seq
"""
_COUNT_STEPS = (
    "SELECT count(*) AS n FROM step_attempts WHERE namespace_id = %(ns)s AND run_id = ANY(%(ids)s)"
)
_COUNT_EVENTS = (
    "SELECT count(*) AS n FROM events WHERE namespace_id = %(ns)s AND run_id = ANY(%(ids)s)"
)
_ALLOW = "SET LOCAL ow_es.allow_event_mutation = 'on'"
_DELETE_EVENTS = "DELETE FROM events WHERE namespace_id = %(ns)s AND run_id = ANY(%(ids)s)"
_DELETE_STEPS = "DELETE FROM step_attempts WHERE namespace_id = %(ns)s AND run_id = ANY(%(ids)s)"
_DELETE_RUNS = "DELETE FROM workflow_runs WHERE namespace_id = %(ns)s AND id = ANY(%(ids)s)"

_INSERT_RUN = statements.insert(RUNS, "postgres", if_new=True)
_INSERT_STEP = statements.insert(STEPS, "postgres")
_INSERT_EVENT = statements.insert(EVENTS, "postgres")


class _Tx:
    def __init__(self, conn: psycopg.AsyncConnection[Any], namespace: str) -> None:
        self.conn = conn
        self.ns = namespace

    async def rows(self, query: str, **params: Any) -> list[dict[str, Any]]:
        cur = self.conn.cursor(row_factory=dict_row)
        await cur.execute(cast(Any, query), {"ns": self.ns, **params})
        return await cur.fetchall() if cur.description else []

    async def count(self, query: str, **params: Any) -> int:
        cur = await self.conn.execute(cast(Any, query), {"ns": self.ns, **params})
        if query.lstrip().upper().startswith("DELETE"):
            return cur.rowcount
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def nodes(self, query: str, **params: Any) -> list[Node]:
        return [
            Node(r["id"], r["parent_run_id"], r["status"], r["finished_at"])
            for r in await self.rows(query, **params)
        ]


# Oldest first through signal_sends_created (migration 0005), a batch at a time.
_FORGET_SENDS = """
WITH old AS (
    SELECT signal_name, idempotency_key FROM signal_sends
    WHERE namespace_id = %(ns)s AND created_at < %(cutoff)s
    ORDER BY created_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM signal_sends s USING old
    WHERE s.namespace_id = %(ns)s AND s.signal_name = old.signal_name
      AND s.idempotency_key = old.idempotency_key
    RETURNING 1
)
SELECT count(*) AS n FROM gone
"""
_COUNT_SENDS = """
SELECT count(*) AS n FROM (
    SELECT 1 FROM signal_sends WHERE namespace_id = %(ns)s AND created_at < %(cutoff)s
    LIMIT %(limit)s
) old
"""


class PostgresRetention:
    def __init__(self, store: PostgresStore) -> None:
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
        async with self._store.connection("deleting old runs") as conn, conn.transaction():
            await conn.execute(Q["begin_append"], {"gate": self._store.gate_key}, prepare=True)
            tx = _Tx(conn, self._store.namespace)
            lock = "" if dry_run else " FOR UPDATE SKIP LOCKED"
            roots = await tx.nodes(
                _ROOTS + lock, cutoff=cutoff, after_at=after[0], after_id=after[1], limit=limit
            )
            if not roots:
                return SweepResult()
            cursor = (cast(datetime, roots[-1].finished_at), roots[-1].id)
            nodes, frontier = list(roots), [r.id for r in roots]
            while frontier:
                level = await tx.nodes(_CHILDREN, ids=frontier)
                nodes.extend(level)
                frontier = [n.id for n in level]
            root_ids = [r.id for r in roots]
            ids = deletable(root_ids, nodes, cutoff)
            if not dry_run:  # the roots are locked already; lock the rest, waiting for none
                rest = sorted(set(ids) - set(root_ids))
                if rest:
                    locked = await tx.nodes(_LOCK, ids=rest)
                    ids = deletable(root_ids, after_locking(nodes, rest, locked), cutoff)
            result = SweepResult(cursor=cursor, runs=len(ids))
            if not ids:
                return result
            if dry_run:
                result.steps = await tx.count(_COUNT_STEPS, ids=ids)
                result.events = await tx.count(_COUNT_EVENTS, ids=ids)
                return result
            if archive is not None:
                records = group(
                    [codec.run_from_row(r) for r in await tx.rows(_RUNS, ids=ids)],
                    [codec.step_from_row(r) for r in await tx.rows(_STEPS, ids=ids)],
                    [codec.event_from_row(r) for r in await tx.rows(_EVENTS, ids=ids)],
                )
                await archive(records)
                result.archived = len(records)
            await conn.execute(_ALLOW)
            result.events = await tx.count(_DELETE_EVENTS, ids=ids)
            result.steps = await tx.count(_DELETE_STEPS, ids=ids)
            result.runs = await tx.count(_DELETE_RUNS, ids=ids)
            return result

    async def forget_sends(self, cutoff: datetime, limit: int, *, dry_run: bool) -> int:
        query = _COUNT_SENDS if dry_run else _FORGET_SENDS
        params = {"cutoff": cutoff, "limit": limit}
        rows = await self._store.fetch(query, params, "forgetting old signal sends")
        return int(rows[0]["n"]) if rows else 0

    async def restore(self, runs: list[ArchivedRun]) -> list[str]:
        ns = self._store.namespace
        inserted: list[str] = []
        async with self._store.connection("importing runs") as conn, conn.transaction():
            await conn.execute(Q["begin_append"], {"gate": self._store.gate_key}, prepare=True)
            for record in runs:
                row = tables.values(RUNS, in_namespace(record.run, ns))
                cur = await conn.execute(cast(Any, _INSERT_RUN), row)
                if await cur.fetchone() is None:
                    continue  # its id or idempotency key is taken
                inserted.append(record.run.id)
                cur = conn.cursor()
                if record.steps:
                    steps = [tables.values(STEPS, in_namespace(s, ns)) for s in record.steps]
                    await cur.executemany(cast(Any, _INSERT_STEP), steps)
                if record.events:
                    await cur.executemany(cast(Any, _INSERT_EVENT), _event_rows(record, ns))
        return inserted


def _event_rows(record: ArchivedRun, namespace: str) -> list[tuple[Any, ...]]:
    return [
        (namespace, e.run_id, e.seq, e.type, e.schema_version, tables.dumps(e.data), e.created_at)
        for e in record.events
    ]
