"""Who serves what: the worker registry part of the port."""

from __future__ import annotations

from typing import Protocol

from ow_es.models import WorkerInfo, WorkflowRun
from ow_es.store.port import WorkflowKey


class WorkerRegistry(Protocol):
    """Who serves what: each worker's own row, kept fresh by its heartbeat (coordination
    state like leases, not projected from the log), and what that says about the runs."""

    async def register(self, worker: WorkerInfo, ttl_seconds: float) -> None:
        """Record (or refresh) a worker; it counts as live for ``ttl_seconds`` after each
        heartbeat. Rows of workers dead for a day are cleared."""
        ...

    async def beat(self, worker_id: str, busy: int) -> None: ...

    async def forget(self, worker_id: str) -> None: ...

    async def live(self) -> list[WorkerInfo]: ...

    async def unserved_runs(self) -> dict[WorkflowKey, int]:
        """Ready runs, by workflow name and version, that no live worker serves."""
        ...

    async def stuck_runs(self, seconds: float, limit: int = 1000) -> list[WorkflowRun]:
        """Runs held by a worker with no event for longer than ``seconds`` (a hung body
        looks exactly like a long step)."""
        ...
