"""Fold whole histories from scratch (``state_at``, the tests' reference fold)."""

from __future__ import annotations

from collections.abc import Iterable

from ow_es.models import StepAttempt, WorkflowRun
from ow_es.projections.recorded import Recorded
from ow_es.projections.runs import apply_run
from ow_es.projections.steps import step_row

StepKey = tuple[str, str, str, int]  # namespace, run, step name, attempt

__all__ = ["Recorded", "fold_log", "fold_run"]


def fold_log(
    events: Iterable[Recorded],
    runs: dict[tuple[str, str], WorkflowRun] | None = None,
    steps: dict[StepKey, StepAttempt] | None = None,
) -> tuple[dict[tuple[str, str], WorkflowRun], dict[StepKey, StepAttempt]]:
    """Apply events (in log order) onto ``runs``/``steps`` (empty when not given)."""
    runs = {} if runs is None else runs
    steps = {} if steps is None else steps
    for rec in events:
        key = (rec.namespace_id, rec.run_id)
        runs[key] = apply_run(runs.get(key), rec)
        step = step_row(rec)
        if step is not None:
            steps[(step.namespace_id, step.run_id, step.step_name, step.attempt)] = step
    return runs, steps


def fold_run(events: Iterable[Recorded]) -> tuple[WorkflowRun | None, list[StepAttempt]]:
    """One run's row and its step attempts (ordered by start) from its events."""
    runs, steps = fold_log(events)
    run = next(iter(runs.values()), None)
    ordered = sorted(steps.values(), key=lambda s: (s.started_at, s.step_name, s.attempt))
    return run, ordered
