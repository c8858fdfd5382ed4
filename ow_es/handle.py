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

_PUSHED_SAFETY_RECHECK = 15.0  # notifications come: re-read only in case one was lost
_FIRST_POLL = 0.02  # no notifications from other processes: poll, backing off
_MAX_POLL = 0.5


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
        poll = _PUSHED_SAFETY_RECHECK if wake.pushes else _FIRST_POLL
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
                if not wake.pushes:  # only this process would tell us: poll, backing off
                    poll = min(poll * 1.5, _MAX_POLL)
        finally:
            waiter.close()

    def _outcome(self, run: WorkflowRun) -> Any:
        if run.status == "completed":
            schema = self._workflow.output_type if self._workflow is not None else Any
            return from_json_value(run.output, schema, "workflow output")
        if run.status == "canceled":
            raise WorkflowCanceled(run.id)
        raise WorkflowFailed(run.id, run.error)
