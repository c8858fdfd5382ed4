"""Map step events to ``step_attempts`` rows. Each step event carries its whole row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ow_es import events as ev
from ow_es.models import StepAttempt, StepKind, StepStatus
from ow_es.projections.recorded import Recorded


def _kind(value: str) -> StepKind:
    if value in ("function", "sleep", "signal_wait", "signal_send", "workflow"):
        return value  # type: ignore[return-value]
    raise ValueError(f"unknown step kind {value!r}")


def _attempt(
    rec: Recorded,
    step_name: str,
    attempt: int,
    kind: str,
    status: StepStatus,
    started_at: datetime,
    **values: Any,
) -> StepAttempt:
    return StepAttempt(
        namespace_id=rec.namespace_id,
        run_id=rec.run_id,
        step_name=step_name,
        attempt=attempt,
        kind=_kind(kind),
        status=status,
        started_at=started_at,
        **values,
    )


def step_row(rec: Recorded) -> StepAttempt | None:
    """The full ``step_attempts`` row written by ``rec``, or None if it touches no step."""
    data, at = rec.data, rec.created_at
    match data:
        case ev.StepStarted():
            return _attempt(
                rec, data.step_name, data.attempt, data.kind, "running", at,
                input=data.input, child_run_id=data.child_run_id, signal_name=data.signal_name,
            )  # fmt: skip
        case ev.StepCompleted():
            return _attempt(
                rec, data.step_name, data.attempt, data.kind, "completed", data.started_at,
                output=data.output, child_run_id=data.child_run_id,
                signal_name=data.signal_name, finished_at=at,
            )  # fmt: skip
        case ev.StepFailed():
            return _attempt(
                rec, data.step_name, data.attempt, data.kind, "failed", data.started_at,
                error=data.error, child_run_id=data.child_run_id,
                signal_name=data.signal_name, finished_at=at,
            )  # fmt: skip
        case ev.SignalReceived():  # delivery completes the waiting step's attempt
            return _attempt(
                rec, data.step_name, data.attempt, "signal_wait", "completed", data.started_at,
                output=data.data, signal_name=data.signal_name, finished_at=at,
            )  # fmt: skip
        case _:
            return None
