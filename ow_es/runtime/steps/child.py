"""``ctx.step.run_workflow``: a child run, started once across replays, its result awaited."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from ow_es import events as ev
from ow_es.durations import Duration, to_seconds, utcnow
from ow_es.errors import StepTimeout
from ow_es.payload import check_name, error_info, from_json_value, to_json_value
from ow_es.runtime.steps.host import StepHost
from ow_es.runtime.unwind import Park, Stale, step_failed
from ow_es.store.port import AppendRequest
from ow_es.workflow import Workflow


async def run_child(
    ex: StepHost,
    workflow: Workflow[Any] | str,
    input: Any,
    *,
    version: str | None,
    timeout: Duration | None,
    name: str | None,
) -> Any:
    spec = workflow if isinstance(workflow, Workflow) else None
    wf_name = spec.name if spec else check_name(workflow, "workflow name")
    version = version if version is not None else (spec.version if spec else None)
    output_type = spec.output_type if spec else Any
    name = ex.unique_name(name or f"child:{wf_name}")
    completed = ex.history.completed.get(name)
    if completed is not None:
        return from_json_value(completed.output, output_type, f"child {wf_name!r} output")
    failed = ex.history.final_failures.get(name)
    if failed is not None:
        raise step_failed(name, failed.error, failed.attempt)
    started = ex.history.started.get(name)
    finished = ex.history.child_finished.get(name)
    if (
        started is not None
        and finished is not None
        and finished.child_run_id == started.child_run_id
    ):
        return await _child_result(ex, name, started, finished, output_type)
    if started is None:
        ex.check_active()
        attempt = ex.history.attempts.get(name, 0) + 1
        child_id, wake = await _start_child(
            ex, name, attempt, wf_name, version, input, spec, timeout
        )
    else:
        child_id = started.child_run_id or ""
        raw = started.input.get("until") if isinstance(started.input, dict) else None
        wake = datetime.fromisoformat(raw) if raw else None
        if wake is not None and wake <= utcnow():
            error = error_info(StepTimeout(f"child run {child_id} did not finish in time"))
            await ex.append(
                [
                    ev.StepFailed(
                        step_name=name,
                        kind="workflow",
                        attempt=started.attempt,
                        error=error,
                        final=True,
                        started_at=ex.history.started_at[name],
                        child_run_id=child_id,
                        worker_id=ex.worker_id,
                    )
                ],
                expect=True,
            )
            raise step_failed(name, error, 1)
    raise ex.parking(Park("child", name, wake, child_run_id=child_id))


async def _start_child(
    ex: StepHost,
    name: str,
    attempt: int,
    wf_name: str,
    version: str | None,
    input: Any,
    spec: Workflow[Any] | None,
    timeout: Duration | None,
) -> tuple[str, datetime | None]:
    """Create the child and record it on the parent in one transaction, the parent's part
    fenced by its claim: a parent that was canceled (or lost) meanwhile leaves no orphan."""
    schema = spec.input_type if spec and spec.takes_input else Any
    value = to_json_value(input, f"child {wf_name!r} input", ex.max_payload_bytes, schema)
    now = utcnow()
    wake = None if timeout is None else now + timedelta(seconds=to_seconds(timeout, "timeout"))
    # The key makes the child exactly-once across replays of this attempt of the step.
    key = f"{ex.run.id}/{name}" if attempt == 1 else f"{ex.run.id}/{name}#{attempt}"
    create = AppendRequest(
        run_id=uuid.uuid4().hex,
        events=[
            ev.RunCreated(
                workflow_name=wf_name,
                version=version,
                input=value,
                idempotency_key=key,
                parent_run_id=ex.run.id,
                parent_step_name=name,
                available_at=now,
            )
        ],
    )
    events: list[ev.EventData] = [
        ev.StepStarted(
            step_name=name,
            kind="workflow",
            attempt=attempt,
            child_run_id=create.run_id,
            input={"until": wake.isoformat() if wake else None},
            worker_id=ex.worker_id,
        ),
        ev.ChildStarted(
            step_name=name,
            child_run_id=create.run_id,
            workflow_name=wf_name,
            worker_id=ex.worker_id,
        ),
    ]
    recorded = await ex.tracked(ex.append(events, child=create))
    child = recorded.child
    assert child is not None
    if child.is_terminal:
        raise Stale()  # it finished before we recorded it: replay to pick up its result
    return child.id, wake


async def _child_result(
    ex: StepHost, name: str, started: ev.StepStarted, finished: ev.ChildFinished, output_type: Any
) -> Any:
    common: dict[str, Any] = {
        "step_name": name,
        "kind": "workflow",
        "attempt": started.attempt,
        "started_at": ex.history.started_at[name],
        "child_run_id": finished.child_run_id,
        "worker_id": ex.worker_id,
    }
    if finished.status == "completed":
        await ex.append([ev.StepCompleted(output=finished.output, **common)])
        return from_json_value(finished.output, output_type, f"child {name!r} output")
    error = finished.error or {
        "type": "WorkflowCanceled",
        "message": f"child run {finished.child_run_id} was {finished.status}",
    }
    await ex.append([ev.StepFailed(error=error, final=True, **common)])
    raise step_failed(name, error, 1)
