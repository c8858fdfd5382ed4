"""The worker registry on PostgreSQL (see ``port.WorkerRegistry``); the database's clock
decides which workers are live."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from ow_es.models import WorkerInfo, WorkflowRun
from ow_es.store import codec, tables
from ow_es.store.named_queries import load
from ow_es.store.port import WorkflowKey

if TYPE_CHECKING:
    from ow_es.store.postgres.store import PostgresStore

Q = load("postgres")


class PostgresRegistry:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    # Each write is idempotent, so it goes through the store's retried ``fetch``.

    async def register(self, worker: WorkerInfo, ttl_seconds: float) -> None:
        params = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "workflows": tables.dumps(worker.workflows),
            "concurrency": worker.concurrency,
            "ttl": ttl_seconds,
            "lane": worker.lane,
        }
        await self._store.fetch(Q["register_worker"], params, "registering")
        await self._store.fetch(Q["expire_workers"], {}, "expiring workers")

    async def beat(self, worker_id: str, busy: int) -> None:
        params = {"id": worker_id, "busy": busy}
        await self._store.fetch(Q["beat_worker"], params, "recording a beat")

    async def forget(self, worker_id: str) -> None:
        await self._store.fetch(Q["forget_worker"], {"id": worker_id}, "leaving")

    async def live(self) -> list[WorkerInfo]:
        rows = await self._store.fetch(Q["live_workers"], {}, "listing workers")
        return [msgspec.convert(row, WorkerInfo, strict=False) for row in rows]

    async def unserved_runs(self) -> dict[WorkflowKey, int]:
        rows = await self._store.fetch(Q["unserved_runs"], {}, "finding unserved runs")
        return {(r["workflow_name"], r["version"]): int(r["n"]) for r in rows}

    async def stuck_runs(self, seconds: float, limit: int = 1000) -> list[WorkflowRun]:
        params = {"seconds": seconds, "limit": limit}
        rows = await self._store.fetch(Q["stuck_runs"], params, "finding stuck runs")
        return [codec.run_from_row(row) for row in rows]
