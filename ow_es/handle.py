"""A handle on one run: its result, status and cancellation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ow_es.durations import utcnow
from ow_es.errors import ResultTimeout, RunNotFound, WorkflowCanceled, WorkflowFailed
from ow_es.models import WorkflowRun
from ow_es.payload import from_json_value

if TYPE_CHECKING:
    from ow_es.client import OpenWorkflow
    from ow_es.workflow import Workflow

# Postgres wakes result() by notification; this re-check only covers a lost one.
_PG_SAFETY_RECHECK = 15.0
_SQLITE_FIRST_POLL = 0.02
_SQLITE_MAX_POLL = 0.5


class RunHandle:
    def __init__(
        self,
        client: OpenWorkflow,
        run_id: str,
        workflow_name: str,
        workflow: Workflow[Any] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.workflow_name = workflow_name
        self._workflow = workflow

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, workflow_name={self.workflow_name!r})"

    async def status(self) -> WorkflowRun:
        run = await self.client.store.get_run(self.run_id)
        if run is None:
            raise RunNotFound(f"run {self.run_id} not found")
        return run

    async def cancel(self, *, cascade: bool = True) -> None:
        await self.client.cancel(self.run_id, cascade=cascade)

    async def result(self, timeout: float | None = None) -> Any:
        """The run's output once it completes; raises WorkflowFailed, WorkflowCanceled, or
        ResultTimeout when ``timeout`` seconds pass first."""
        store = self.client.store
        wake = store.wake_channel()
        await wake.start()
        waiter = wake.subscribe_done(self.run_id)  # subscribe before reading: no lost wake-up
        deadline = None if timeout is None else utcnow().timestamp() + timeout
        poll = _SQLITE_FIRST_POLL if store.backend == "sqlite" else _PG_SAFETY_RECHECK
        try:
            while True:
                run = await self.status()
                if run.is_terminal:
                    return self._outcome(run)
                wait = poll
                if deadline is not None:
                    remaining = deadline - utcnow().timestamp()
                    if remaining <= 0:
                        raise ResultTimeout(
                            f"run {self.run_id} did not finish within {timeout}s ({run.status})"
                        )
                    wait = min(wait, remaining)
                await waiter.wait(wait)
                if store.backend == "sqlite":
                    poll = min(poll * 1.5, _SQLITE_MAX_POLL)
        finally:
            waiter.close()

    def _outcome(self, run: WorkflowRun) -> Any:
        if run.status == "completed":
            schema = self._workflow.output_type if self._workflow is not None else Any
            return from_json_value(run.output, schema, "workflow output")
        if run.status == "canceled":
            raise WorkflowCanceled(run.id)
        raise WorkflowFailed(run.id, run.error)
