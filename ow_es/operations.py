"""Operating a namespace from the client: its workers, its limits, reproject, retention and
archives (what ``ow-es`` commands and the dashboard call)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ow_es.durations import Duration
from ow_es.limits import Limits, StoredLimits
from ow_es.models import WorkerInfo
from ow_es.payload import check_name
from ow_es.reproject import Report, rebuild
from ow_es.retention import ImportReport, RetentionReport
from ow_es.retention import import_archive as _import_archive
from ow_es.retention import retention as _retention
from ow_es.store import Store
from ow_es.workflow import Workflow


class Operations:
    """The client's operator calls (mixed into ``OpenWorkflow``)."""

    @property
    def store(self) -> Store:
        raise NotImplementedError

    async def workers(self) -> list[WorkerInfo]:
        """The live workers of this namespace: what each serves, its busy slots, its last
        heartbeat."""
        return await self.store.registry.live()

    async def limits(self) -> list[StoredLimits]:
        """The limits in force, as stored (they win over the code's ``limits=``)."""
        return await self.store.limits.stored()

    async def set_limits(self, workflow: Workflow[Any] | str, limits: Limits) -> None:
        """Store an operator's ``limits`` for a workflow (all versions), in force at the next
        claim and kept across deploys until ``clear_limits``."""
        await self.store.limits.set(_name_of(workflow), limits, "operator")

    async def clear_limits(self, workflow: Workflow[Any] | str) -> bool:
        """Remove a workflow's stored limits (a worker declaring ``limits=`` stores its own
        when it starts); False when none were stored."""
        return await self.store.limits.clear(_name_of(workflow))

    async def reproject(
        self,
        *,
        verify: bool = False,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Report:
        """Rebuild ``workflow_runs`` and ``step_attempts`` from the log, online (all namespaces
        of this database/schema). ``verify`` diffs instead of swapping; ``dry_run`` only counts."""
        rebuilder = self.store.rebuilder()
        if dry_run:
            return Report(counts=await rebuilder.counts())
        return await rebuild(rebuilder, verify=verify, progress=progress or (lambda n: None))

    async def retention(
        self,
        older_than: Duration = "30d",
        archive: str | os.PathLike[str] | None = None,
        dry_run: bool = False,
        batch: int = 1000,
    ) -> RetentionReport:
        """Delete the terminal runs of this namespace that finished more than ``older_than``
        ago, with their step attempts and events, a whole run tree at a time (a run goes only
        with its descendants, and only when all are terminal and old enough), ``batch`` trees
        per transaction. With ``archive`` (a ``.jsonl.gz`` path, appended to), each run is
        written there first, and a batch is deleted only once the file is fsynced. Deleted
        runs free their idempotency keys. ``dry_run`` counts and deletes nothing. Safe to run
        from several processes at once."""
        return await _retention(
            self.store, older_than=older_than, archive=archive, dry_run=dry_run, batch=batch
        )

    async def import_archive(self, path: str | os.PathLike[str]) -> ImportReport:
        """Load the runs of a retention archive back into this namespace: their rows, step
        attempts and events as they were (events keep their seq, type, data and time; their
        log positions are new). A run that exists (its id or idempotency key taken) is
        skipped and reported."""
        return await _import_archive(self.store, path)


def _name_of(workflow: Workflow[Any] | str) -> str:
    return check_name(workflow.name if isinstance(workflow, Workflow) else workflow, "workflow")
