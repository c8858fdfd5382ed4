"""The worker registry on SQLite (see ``port.WorkerRegistry``): every time here comes from
the local clock, so which workers are live is decided in Python."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from ow_es.models import WorkerInfo, WorkflowRun
from ow_es.store import codec, tables
from ow_es.store.named_queries import load
from ow_es.store.port import WorkflowKey
from ow_es.store.sqlite.transaction import ts

if TYPE_CHECKING:
    from ow_es.store.sqlite.store import SqliteStore

Q = load("sqlite")


def _now() -> datetime:
    return datetime.now(UTC)


class SqliteRegistry:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def register(self, worker: WorkerInfo, ttl_seconds: float) -> None:
        now = _now()
        workflows = tables.dumps(worker.workflows)
        ns = self._store.namespace
        async with self._store.write_tx("registering a worker") as conn:
            await conn.execute(
                Q["register_worker"],
                (ns, worker.id, worker.host, worker.pid, workflows, worker.concurrency,
                 ttl_seconds, ts(now), worker.lane),
            )  # fmt: skip
            await conn.execute(Q["expire_workers"], (ns, ts(now - timedelta(days=1))))

    async def beat(self, worker_id: str, busy: int) -> None:
        async with self._store.write_tx("recording a heartbeat") as conn:
            params = (self._store.namespace, worker_id, ts(_now()), busy)
            await conn.execute(Q["beat_worker"], params)

    async def forget(self, worker_id: str) -> None:
        async with self._store.write_tx("leaving the registry") as conn:
            await conn.execute(Q["forget_worker"], (self._store.namespace, worker_id))

    async def live(self) -> list[WorkerInfo]:
        now = _now()
        live = []
        for row in await self._store.fetch(Q["all_workers"], (self._store.namespace,)):
            beat = datetime.fromisoformat(row["heartbeat_at"])
            if beat + timedelta(seconds=row["ttl_seconds"]) > now:
                row["workflows"] = msgspec.json.decode(row["workflows"])
                live.append(msgspec.convert(row, WorkerInfo, strict=False))
        return live

    async def unserved_runs(self) -> dict[WorkflowKey, int]:
        served = {(name, version) for w in await self.live() for name, version in w.workflows}
        params = (self._store.namespace, ts(_now()))
        rows = await self._store.fetch(Q["ready_by_workflow"], params)
        return {
            (r["workflow_name"], r["version"]): int(r["n"])
            for r in rows
            if (r["workflow_name"], r["version"]) not in served
        }

    async def stuck_runs(self, seconds: float, limit: int = 1000) -> list[WorkflowRun]:
        params = (self._store.namespace, ts(_now() - timedelta(seconds=seconds)), limit)
        rows = await self._store.fetch(Q["stuck_runs"], params)
        return [codec.run_from_row(row) for row in rows]
