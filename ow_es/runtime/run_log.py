"""The worker's log line per run it ended."""

from __future__ import annotations

import logging

from ow_es.models import WorkflowRun

log = logging.getLogger("ow_es.worker")


def log_end(run: WorkflowRun | None) -> None:
    """One line per run this worker ended, with its facts as fields (for JSON logs)."""
    if run is None or not run.is_terminal or run.finished_at is None:
        return
    started = run.started_at or run.created_at
    duration_ms = round((run.finished_at - started).total_seconds() * 1000)
    fields = {
        "workflow": run.workflow_name,
        "run_id": run.id,
        "status": run.status,
        "duration_ms": duration_ms,
        "attempts": run.attempts,
    }
    log.info(
        "run %s of %s %s in %d ms (attempt %d)",
        run.id, run.workflow_name, run.status, duration_ms, run.attempts,
        extra=fields,
    )  # fmt: skip
