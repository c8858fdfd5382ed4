"""The read models: a run's row, its step attempts, its events. Pure msgspec structs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

RunStatus = Literal["pending", "running", "completed", "failed", "canceled"]
StepKind = Literal["function", "sleep", "signal_wait", "signal_send", "workflow"]
StepStatus = Literal["running", "completed", "failed"]

# Rows and events are plain data, never in reference cycles: gc=False keeps the cyclic garbage
# collector from walking the hundreds of thousands of them a rebuild holds.

RUN_STATUSES: tuple[RunStatus, ...] = ("pending", "running", "completed", "failed", "canceled")
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "canceled"})


class WorkflowRun(msgspec.Struct, kw_only=True, gc=False):
    """One row of ``workflow_runs``: the projection of a run's events."""

    namespace_id: str
    id: str
    workflow_name: str
    version: str | None
    status: RunStatus
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    idempotency_key: str | None = None
    key: str | None = None  # flow control: per-key limits
    priority: int = 0  # higher is claimed first
    parent_run_id: str | None = None
    parent_step_name: str | None = None
    worker_id: str | None = None
    claim_token: str | None = None
    lease_until: datetime | None = None
    available_at: datetime | None = None
    deadline_at: datetime | None = None
    waiting_for: dict[str, Any] | None = None
    seq: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class StepAttempt(msgspec.Struct, kw_only=True, gc=False):
    """One row of ``step_attempts``: one attempt of one step."""

    namespace_id: str
    run_id: str
    step_name: str
    attempt: int
    kind: StepKind
    status: StepStatus
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    child_run_id: str | None = None
    signal_name: str | None = None
    started_at: datetime
    finished_at: datetime | None = None


class Event(msgspec.Struct, kw_only=True, gc=False):
    """One entry of the event log, as ``history()`` returns it."""

    namespace_id: str
    run_id: str
    position: int
    seq: int
    type: str
    schema_version: int
    data: dict[str, Any]
    created_at: datetime


class RunState(msgspec.Struct, kw_only=True):
    """A run and its step attempts as of one of its events (``state_at``)."""

    run: WorkflowRun
    steps: list[StepAttempt]


class WorkerInfo(msgspec.Struct, kw_only=True):
    """A live worker, as it records itself (``ow.workers()``)."""

    id: str
    host: str
    pid: int
    workflows: list[tuple[str, str | None]]  # (name, version) pairs it serves
    concurrency: int
    busy: int
    started_at: datetime
    heartbeat_at: datetime
    lane: str | None = None  # its own wake-up channel (PostgreSQL; see README "Wake-ups")


class RunPage(msgspec.Struct, kw_only=True):
    """A page of ``list_runs``: newest first; ``next_cursor`` is None on the last page."""

    runs: list[WorkflowRun]
    next_cursor: str | None = None


RUN_COLUMNS: tuple[str, ...] = WorkflowRun.__struct_fields__
STEP_COLUMNS: tuple[str, ...] = StepAttempt.__struct_fields__
