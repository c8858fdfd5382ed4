"""The primitives of one PostgreSQL write transaction (see ``port.Primitives``).

The transaction runs in pipeline mode: statements are sent as they are issued and the client
waits only where it needs a result, so an append costs two round trips (lock and read the
rows; write, notify and commit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg.rows import dict_row

from ow_es.models import StepAttempt, WorkflowRun
from ow_es.store import codec, statements, tables
from ow_es.store.flow import Usage
from ow_es.store.limits_port import limits_from_row, usage_from_rows
from ow_es.store.named_queries import load
from ow_es.store.plan import Plan
from ow_es.store.port import Ready, WorkflowKey
from ow_es.store.postgres.wake import Channels
from ow_es.store.tables import EVENTS, RUNS, STEPS, TxTime

Q = load("postgres")
_INSERT_RUN = statements.insert(RUNS, "postgres", if_new=True)
_INSERT_EVENT = statements.insert(EVENTS, "postgres")
_UPSERT_STEP = statements.upsert(STEPS, "postgres")


class PostgresTransaction:
    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        namespace: str,
        begin: psycopg.AsyncCursor[Any],
        time: TxTime,
    ) -> None:
        self.namespace = namespace
        self.time = time
        self._conn = conn
        self._begin = begin  # its row holds the transaction's now()
        self._now: datetime | None = None
        self.ready: dict[str, WorkflowKey] = {}  # run id -> its workflow, of runs made ready
        self.done: list[str] = []

    async def now(self) -> datetime:
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
        stamp = self.time.hook(await self.now())
        cur = self._conn.cursor()
        params = [tables.values(RUNS, run, stamp) for run in runs]
        await cur.executemany(cast(Any, _INSERT_RUN), params, returning=True)
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
        stamp = self.time.hook(await self.now())
        cur = self._conn.cursor()
        # Queued in the transaction's pipeline; sent with the next sync.
        if plan.events:
            params = [codec.event_values(e, stamp) for e in plan.events]
            await cur.executemany(cast(Any, _INSERT_EVENT), params)
        for columns, rows in tables.changes(RUNS, plan.updated_runs, stamp).items():
            await cur.executemany(cast(Any, statements.update(RUNS, columns, "postgres")), rows)
        if plan.steps:
            params = [tables.values(STEPS, s, stamp) for s in plan.steps]
            await cur.executemany(cast(Any, _UPSERT_STEP), params)

    def notify(self, *, ready: Mapping[str, WorkflowKey], done: list[str]) -> None:
        self.ready.update(ready)
        self.done.extend(done)

    async def send_notifications(self, channels: Channels) -> None:
        """One NOTIFY per channel and transaction: NOTIFY serialises commits cluster-wide.
        One run made ready is told to one worker that serves it (``lanes.py``). Queued; sent
        with the commit."""
        cur = self._conn.cursor()
        for note in channels.payloads(ready=self.ready, done=self.done):
            await cur.execute(cast(Any, f"SELECT {note.sql}"), note.params)

    async def select_ready(
        self, workflows: Sequence[WorkflowKey], limit: int, taken: Sequence[str] = ()
    ) -> Ready:
        params = {**self._served(workflows, limit), "taken": list(taken)}
        # All four go out together (pipeline); the selects run after the limits are locked.
        cursors = [self._conn.cursor(row_factory=dict_row) for _ in range(4)]
        for cur, name in zip(cursors, _CLAIM_QUERIES, strict=True):
            await cur.execute(Q[name], params, prepare=True)
        limits = {r["workflow_name"]: limits_from_row(r) for r in await cursors[0].fetchall()}
        ready = [*await cursors[1].fetchall(), *await cursors[2].fetchall()]
        ready.sort(key=lambda r: (-r["priority"], r["available_at"]))
        rows = [*ready, *await cursors[3].fetchall()]  # expired leases fill what is left
        return Ready(rows=_served_only(rows, workflows)[:limit], limits=limits)

    async def flow_usage(self, names: Sequence[str], keys: Sequence[tuple[str, str]]) -> Usage:
        return usage_from_rows(await self._rows(Q["flow_usage"], usage_params(names, keys)))

    async def select_overdue(
        self, workflows: Sequence[WorkflowKey], limit: int
    ) -> list[WorkflowRun]:
        cur = self._conn.cursor(row_factory=dict_row)
        await cur.execute(Q["select_overdue"], self._served(workflows, limit), prepare=True)
        return _served_only(await cur.fetchall(), workflows)

    def _served(self, workflows: Sequence[WorkflowKey], limit: int) -> dict[str, Any]:
        return {
            "ns": self.namespace,
            "names": sorted({name for name, _ in workflows}),
            "versions": sorted({version for _, version in workflows if version is not None}),
            "unversioned": any(version is None for _, version in workflows),
            "limit": limit,
        }

    async def open_signal_waits(self, signal_name: str) -> list[StepAttempt]:
        rows = await self._rows(Q["open_signal_waits"], {"signal": signal_name})
        return [codec.step_from_row(row) for row in rows]

    async def open_attempts(self, run_ids: list[str]) -> list[StepAttempt]:
        rows = await self._rows(Q["open_attempts"], {"ids": run_ids})
        return [codec.step_from_row(row) for row in rows]

    async def live_children(self, parent_ids: list[str]) -> list[str]:
        rows = await self._rows(Q["live_children"], {"ids": parent_ids})
        return [row["id"] for row in rows]

    async def claim_signal_key(self, key: str, signal_name: str) -> bool:
        rows = await self._rows(Q["claim_signal_key"], {"signal": signal_name, "key": key})
        return bool(rows)

    async def signal_send(self, key: str, signal_name: str) -> list[str]:
        rows = await self._rows(Q["get_signal_send"], {"signal": signal_name, "key": key})
        return list(rows[0]["delivered_to"]) if rows else []

    async def record_signal_send(self, key: str, signal_name: str, run_ids: list[str]) -> None:
        await self._conn.execute(
            Q["put_signal_send"],
            {"ns": self.namespace, "key": key, "signal": signal_name, "ids": tables.dumps(run_ids)},
        )


_CLAIM_QUERIES = ("lock_limits", "claim_queued", "claim_timers", "claim_expired")


def usage_params(names: Sequence[str], keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "names": list(names),
        "key_names": [name for name, _ in keys],
        "keys": [key for _, key in keys],
    }


def _served_only(rows: list[dict[str, Any]], workflows: Sequence[WorkflowKey]) -> list[WorkflowRun]:
    """The queries match names and versions separately: keep the exact pairs served."""
    served = set(workflows)
    runs = [codec.run_from_row(row) for row in rows]
    return [r for r in runs if (r.workflow_name, r.version) in served]
