"""The primitives of one SQLite write transaction (see ``port.Primitives``): ``BEGIN
IMMEDIATE`` holds the database's write lock, so every read here is already locked."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import msgspec

from ow_es.models import StepAttempt, WorkflowRun
from ow_es.store import codec, statements, tables
from ow_es.store.flow import Usage
from ow_es.store.limits_port import limits_from_row, usage_from_rows
from ow_es.store.named_queries import load
from ow_es.store.plan import Plan
from ow_es.store.port import Ready, WorkflowKey
from ow_es.store.tables import EVENTS, RUNS, STEPS, TxTime

Q = load("sqlite")
_INSERT_RUN = statements.insert(RUNS, "sqlite", if_new=True)
_INSERT_EVENT = statements.insert(EVENTS, "sqlite")
_UPSERT_STEP = statements.upsert(STEPS, "sqlite")
_JSON_COLUMNS = {"input", "output", "error", "waiting_for", "data"}


def ts(value: datetime | None) -> str | None:
    """Fixed-width UTC text, so text order is time order."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def row_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A row with its JSON columns decoded."""
    out = dict(row)
    for key in _JSON_COLUMNS.intersection(out):
        if out[key] is not None:
            out[key] = msgspec.json.decode(out[key])
    return out


def usage_params(
    namespace: str, now: datetime, names: Sequence[str], keys: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """The parameters of ``flow_usage``: one (workflow, None) pair per workflow, then keys."""
    pairs = [[name, None] for name in names] + [[name, key] for name, key in keys]
    return {"ns": namespace, "now": ts(now), "pairs": tables.dumps(pairs)}


def workflows_json(workflows: Sequence[WorkflowKey]) -> str:
    return tables.dumps([[name, version or ""] for name, version in workflows])


class SqliteTransaction:
    def __init__(self, conn: aiosqlite.Connection, namespace: str, now: datetime) -> None:
        self.namespace = namespace
        self.time = TxTime(now)  # the clock read under the write lock is the marker itself
        self._conn = conn
        self._now = now
        self._stamp = self.time.hook(now)
        self.ready = False
        self.done: list[str] = []

    def _time(self, value: Any) -> Any:
        return ts(self._stamp(value))

    async def now(self) -> datetime:
        return self._now

    async def _rows(
        self, query: str, params: tuple[Any, ...] | dict[str, Any]
    ) -> list[dict[str, Any]]:
        return [row_dict(r) for r in await self._conn.execute_fetchall(query, params)]

    async def insert_runs(self, runs: list[WorkflowRun]) -> set[str]:
        inserted: set[str] = set()
        for run in runs:
            rows = await self._conn.execute_fetchall(
                _INSERT_RUN, tables.values(RUNS, run, self._time)
            )
            inserted.update(row[0] for row in rows)
        return inserted

    async def find_by_key(self, workflow_name: str, key: str | None) -> WorkflowRun | None:
        rows = await self._rows(Q["find_by_key"], (self.namespace, workflow_name, key))
        return codec.run_from_row(rows[0]) if rows else None

    async def lock_runs(self, run_ids: list[str]) -> dict[str, WorkflowRun]:
        rows = await self._rows(Q["lock_runs"], (self.namespace, tables.dumps(run_ids)))
        return {row["id"]: codec.run_from_row(row) for row in rows}

    async def write(self, plan: Plan) -> None:
        if plan.events:
            params = [codec.event_values(e, self._time) for e in plan.events]
            await self._conn.executemany(_INSERT_EVENT, params)
        for columns, rows in tables.changes(RUNS, plan.updated_runs, self._time).items():
            await self._conn.executemany(statements.update(RUNS, columns, "sqlite"), rows)
        if plan.steps:
            params = [tables.values(STEPS, s, self._time) for s in plan.steps]
            await self._conn.executemany(_UPSERT_STEP, params)

    def notify(self, *, ready: Mapping[str, WorkflowKey], done: list[str]) -> None:
        self.ready = self.ready or bool(ready)
        self.done.extend(done)

    async def select_ready(
        self, workflows: Sequence[WorkflowKey], limit: int, taken: Sequence[str] = ()
    ) -> Ready:
        names = tables.dumps(sorted({name for name, _ in workflows}))
        stored = await self._rows(Q["served_limits"], (self.namespace, names))
        params = {
            "ns": self.namespace,
            "now": ts(self._now),
            "workflows": workflows_json(workflows),
            "names": names,
            "taken": tables.dumps(list(taken)),
            "limit": limit,
        }
        candidates = await self._rows(Q["claim_candidates"], params)
        tiers = [row.pop("tier") for row in candidates]  # 0: ready, 1: an expired lease
        ready = [row for row, tier in zip(candidates, tiers, strict=True) if tier == 0]
        ready.sort(key=lambda r: (-r["priority"], r["available_at"]))
        expired = [row for row, tier in zip(candidates, tiers, strict=True) if tier == 1]
        rows = [*ready, *expired][:limit]
        return Ready(
            rows=[codec.run_from_row(row) for row in rows],
            limits={row["workflow_name"]: limits_from_row(row) for row in stored},
        )

    async def flow_usage(self, names: Sequence[str], keys: Sequence[tuple[str, str]]) -> Usage:
        params = usage_params(self.namespace, self._now, names, keys)
        rows = [dict(r) for r in await self._conn.execute_fetchall(Q["flow_usage"], params)]
        return usage_from_rows(rows, datetime.fromisoformat)

    async def select_overdue(
        self, workflows: Sequence[WorkflowKey], limit: int
    ) -> list[WorkflowRun]:
        return await self._select("select_overdue", workflows, limit)

    async def _select(
        self, query: str, workflows: Sequence[WorkflowKey], limit: int
    ) -> list[WorkflowRun]:
        now = ts(self._now)
        params = (self.namespace, now, now, workflows_json(workflows), limit)
        return [codec.run_from_row(row) for row in await self._rows(Q[query], params)]

    async def open_signal_waits(self, signal_name: str) -> list[StepAttempt]:
        rows = await self._rows(Q["open_signal_waits"], (self.namespace, signal_name))
        return [codec.step_from_row(row) for row in rows]

    async def open_attempts(self, run_ids: list[str]) -> list[StepAttempt]:
        rows = await self._rows(Q["open_attempts"], (self.namespace, tables.dumps(run_ids)))
        return [codec.step_from_row(row) for row in rows]

    async def live_children(self, parent_ids: list[str]) -> list[str]:
        rows = await self._rows(Q["live_children"], (self.namespace, tables.dumps(parent_ids)))
        return [row["id"] for row in rows]

    async def claim_signal_key(self, key: str, signal_name: str) -> bool:
        params = (self.namespace, signal_name, key, ts(self._now))
        return bool(await self._conn.execute_fetchall(Q["claim_signal_key"], params))

    async def signal_send(self, key: str, signal_name: str) -> list[str]:
        rows = await self._rows(Q["get_signal_send"], (self.namespace, signal_name, key))
        return list(msgspec.json.decode(rows[0]["delivered_to"])) if rows else []

    async def record_signal_send(self, key: str, signal_name: str, run_ids: list[str]) -> None:
        params = (tables.dumps(run_ids), self.namespace, signal_name, key)
        await self._conn.execute(Q["put_signal_send"], params)
