"""Fold a run's events into its ``workflow_runs`` row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ow_es import events as ev
from ow_es.models import WorkflowRun
from ow_es.projections.recorded import Recorded


def _earliest(until: datetime | None, deadline: datetime | None) -> datetime | None:
    if until is None:
        return deadline
    if deadline is None:
        return until
    return min(until, deadline)


def _parked(row: WorkflowRun, until: datetime | None, waiting_for: dict[str, Any]) -> WorkflowRun:
    """The worker lets go; the run waits (still ``running``) until ``until`` or its deadline."""
    return msgspec.structs.replace(
        row,
        worker_id=None,
        claim_token=None,
        lease_until=None,
        available_at=_earliest(until, row.deadline_at),
        waiting_for=waiting_for,
    )


def _ready_now(row: WorkflowRun, at: datetime) -> WorkflowRun:
    if row.is_terminal or row.claim_token is not None:
        return row
    return msgspec.structs.replace(row, available_at=at, waiting_for=None)


def _finished(row: WorkflowRun, at: datetime, **changes: Any) -> WorkflowRun:
    return msgspec.structs.replace(
        row,
        worker_id=None,
        claim_token=None,
        lease_until=None,
        available_at=None,
        waiting_for=None,
        finished_at=at,
        **changes,
    )


def _created(rec: Recorded, data: ev.RunCreated) -> WorkflowRun:
    return WorkflowRun(
        namespace_id=rec.namespace_id,
        id=rec.run_id,
        workflow_name=data.workflow_name,
        version=data.version,
        status="pending",
        input=data.input,
        idempotency_key=data.idempotency_key,
        key=data.key,
        priority=data.priority,
        parent_run_id=data.parent_run_id,
        parent_step_name=data.parent_step_name,
        available_at=_earliest(data.available_at, data.deadline_at),
        deadline_at=data.deadline_at,
        seq=rec.seq,
        created_at=rec.created_at,
        updated_at=rec.created_at,
    )


def _apply(row: WorkflowRun, rec: Recorded) -> WorkflowRun:
    data = rec.data
    at = rec.created_at
    waiting: dict[str, Any]
    match data:
        case ev.RunClaimed():
            return msgspec.structs.replace(
                row,
                status="running",
                worker_id=data.worker_id,
                claim_token=data.claim_token,
                lease_until=data.lease_until,
                available_at=None,
                waiting_for=None,
                started_at=row.started_at or at,
                attempts=max(row.attempts, 1),
            )
        case ev.RunSleeping():
            waiting = {"kind": "sleep", "step": data.step_name, "until": data.until}
            return _parked(row, data.until, waiting)
        case ev.RunWaiting():
            waiting = {"kind": data.kind, "step": data.step_name}
            if data.kind == "signal":
                waiting["name"] = data.signal_name
            else:
                waiting["run_id"] = data.child_run_id
            if data.until is not None:
                waiting["until"] = data.until
            return _parked(row, data.until, waiting)
        case ev.RetryScheduled():
            waiting = {"kind": "retry", "step": data.step_name, "until": data.until}
            parked = _parked(row, data.until, waiting)
            if data.step_name is None:  # the workflow body itself is retried
                parked = msgspec.structs.replace(parked, attempts=data.attempt)
            return parked
        case ev.RunReleased():
            return msgspec.structs.replace(
                row, worker_id=None, claim_token=None, lease_until=None, available_at=at
            )
        case ev.RunWoken() | ev.SignalReceived() | ev.ChildFinished():
            return _ready_now(row, at)
        case ev.RunCompleted():
            return _finished(row, at, status="completed", output=data.output)
        case ev.RunFailed():
            return _finished(row, at, status="failed", error=data.error)
        case ev.RunCanceled():
            return _finished(row, at, status="canceled")
        case ev.RunResumed():
            return msgspec.structs.replace(
                row,
                status="running",
                error=None,
                finished_at=None,
                available_at=at,
                waiting_for=None,
            )
        case _:
            return row


def apply_run(row: WorkflowRun | None, rec: Recorded) -> WorkflowRun:
    """The run's row after ``rec``; ``row`` is None only before ``run_created``."""
    if isinstance(rec.data, ev.RunCreated):
        return _created(rec, rec.data)
    if row is None:
        raise ValueError(f"event {rec.data.TYPE} seq {rec.seq} of run {rec.run_id} has no run")
    new = _apply(row, rec)
    return msgspec.structs.replace(new, seq=rec.seq, updated_at=at_of(rec))


def at_of(rec: Recorded) -> datetime:
    return rec.created_at
