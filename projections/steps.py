"""Map step events to ``step_attempts`` rows. Each step event carries its whole row."""

from __future__ import annotations

from ow_es import events as ev
from ow_es.models import StepAttempt, StepKind
from ow_es.projections.recorded import Recorded


def _kind(value: str) -> StepKind:
    if value in ("function", "sleep", "signal_wait", "signal_send", "workflow"):
        return value  # type: ignore[return-value]
    raise ValueError(f"unknown step kind {value!r}")


def step_row(rec: Recorded) -> StepAttempt | None:
    """The full ``step_attempts`` row written by ``rec``, or None if it touches no step."""
    data = rec.data
    ns, run_id = rec.namespace_id, rec.run_id
    match data:
        case ev.StepStarted():
            return StepAttempt(
                namespace_id=ns,
                run_id=run_id,
                step_name=data.step_name,
                attempt=data.attempt,
                kind=_kind(data.kind),
                status="running",
                input=data.input,
                child_run_id=data.child_run_id,
                signal_name=data.signal_name,
                started_at=rec.created_at,
            )
        case ev.StepCompleted():
            return StepAttempt(
                namespace_id=ns,
                run_id=run_id,
                step_name=data.step_name,
                attempt=data.attempt,
                kind=_kind(data.kind),
                status="completed",
                output=data.output,
                child_run_id=data.child_run_id,
                signal_name=data.signal_name,
                started_at=data.started_at,
                finished_at=rec.created_at,
            )
        case ev.StepFailed():
            return StepAttempt(
                namespace_id=ns,
                run_id=run_id,
                step_name=data.step_name,
                attempt=data.attempt,
                kind=_kind(data.kind),
                status="failed",
                error=data.error,
                child_run_id=data.child_run_id,
                started_at=data.started_at,
                finished_at=rec.created_at,
            )
        case ev.SignalReceived():
            return StepAttempt(
                namespace_id=ns,
                run_id=run_id,
                step_name=data.step_name,
                attempt=data.attempt,
                kind="signal_wait",
                status="completed",
                output=data.data,
                signal_name=data.signal_name,
                started_at=data.started_at,
                finished_at=rec.created_at,
            )
        case _:
            return None
