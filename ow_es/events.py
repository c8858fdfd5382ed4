"""The event types of the log. Pure: msgspec structs, no I/O.

Each type is a struct whose class attribute ``TYPE`` is the stable snake_case name stored in
``events.type``; its fields are stored as the event's ``data``. ``SCHEMA_VERSION`` is the
current shape; :data:`UPCASTERS` turn the data of older shapes into the current one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

import msgspec


class EventData(msgspec.Struct, kw_only=True, gc=False):
    TYPE: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1


class RunCreated(EventData, kw_only=True):
    TYPE = "run_created"
    workflow_name: str
    version: str | None = None
    input: Any = None
    idempotency_key: str | None = None
    parent_run_id: str | None = None
    parent_step_name: str | None = None
    available_at: datetime
    key: str | None = None
    priority: int = 0
    deadline_at: datetime | None = None


class RunClaimed(EventData, kw_only=True):
    TYPE = "run_claimed"
    worker_id: str
    claim_token: str
    lease_until: datetime


class StepStarted(EventData, kw_only=True):
    TYPE = "step_started"
    step_name: str
    kind: str
    attempt: int
    worker_id: str | None = None
    input: Any = None
    child_run_id: str | None = None
    signal_name: str | None = None


class StepCompleted(EventData, kw_only=True):
    TYPE = "step_completed"
    step_name: str
    kind: str
    attempt: int
    output: Any = None
    started_at: datetime
    worker_id: str | None = None
    child_run_id: str | None = None
    signal_name: str | None = None


class StepFailed(EventData, kw_only=True):
    TYPE = "step_failed"
    step_name: str
    kind: str
    attempt: int
    error: dict[str, Any]
    started_at: datetime
    final: bool
    worker_id: str | None = None
    child_run_id: str | None = None
    signal_name: str | None = None
    # False for a RetryAfter suspension: the attempt does not count against the budget.
    counted: bool = True
    # The attempt was left open (its worker was lost mid-step, or its run ended): recorded so
    # the attempt is not left "running", but it never counts against the retry budget.
    abandoned: bool = False


class RunSleeping(EventData, kw_only=True):
    """The run parks until ``until`` (its slot is freed)."""

    TYPE = "run_sleeping"
    step_name: str
    until: datetime
    worker_id: str | None = None


class RunWaiting(EventData, kw_only=True):
    """The run parks waiting for a signal or a child run (``until`` = the wait's timeout)."""

    TYPE = "run_waiting"
    step_name: str
    kind: str  # "signal" or "child"
    signal_name: str | None = None
    child_run_id: str | None = None
    until: datetime | None = None
    worker_id: str | None = None


class RetryScheduled(EventData, kw_only=True):
    """A failed step (or, with ``step_name`` None, the workflow body) is retried at ``until``."""

    TYPE = "retry_scheduled"
    step_name: str | None
    attempt: int
    until: datetime
    worker_id: str | None = None
    counted: bool = True  # False after a RetryAfter: the failed attempt spent no budget


class RunWoken(EventData, kw_only=True):
    """A parked run made ready now (e.g. by an operator)."""

    TYPE = "run_woken"
    reason: str


class RunReleased(EventData, kw_only=True):
    """A worker gave the run back (shutdown, a newer history, its executor crashed); ready at
    once. ``error`` is set when the executor crashed."""

    TYPE = "run_released"
    worker_id: str
    reason: str
    error: dict[str, Any] | None = None


class SignalSent(EventData, kw_only=True):
    TYPE = "signal_sent"
    step_name: str
    signal_name: str
    data: Any = None
    delivered_to: list[str] = []
    idempotency_key: str | None = None
    worker_id: str | None = None


class SignalReceived(EventData, kw_only=True):
    """Delivery to a waiting step: completes that step's attempt and wakes the run."""

    TYPE = "signal_received"
    signal_name: str
    step_name: str
    attempt: int
    started_at: datetime
    data: Any = None
    idempotency_key: str | None = None
    sender_run_id: str | None = None


class ChildStarted(EventData, kw_only=True):
    TYPE = "child_started"
    step_name: str
    child_run_id: str
    workflow_name: str
    worker_id: str | None = None


class ChildFinished(EventData, kw_only=True):
    """Appended to the parent when a child ends; wakes the parent."""

    TYPE = "child_finished"
    step_name: str
    child_run_id: str
    status: str
    output: Any = None
    error: dict[str, Any] | None = None


class RunCompleted(EventData, kw_only=True):
    TYPE = "run_completed"
    output: Any = None
    worker_id: str | None = None


class RunFailed(EventData, kw_only=True):
    TYPE = "run_failed"
    error: dict[str, Any]
    reason: str | None = None
    worker_id: str | None = None


class RunCanceled(EventData, kw_only=True):
    TYPE = "run_canceled"
    reason: str | None = None
    cascaded_from: str | None = None


class RunResumed(EventData, kw_only=True):
    """A failed run goes on from its failed step; earlier step failures no longer count."""

    TYPE = "run_resumed"
    previous_error: dict[str, Any] | None = None


EVENT_TYPES: dict[str, type[EventData]] = {
    cls.TYPE: cls
    for cls in (
        RunCreated,
        RunClaimed,
        StepStarted,
        StepCompleted,
        StepFailed,
        RunSleeping,
        RunWaiting,
        RetryScheduled,
        RunWoken,
        RunReleased,
        SignalSent,
        SignalReceived,
        ChildStarted,
        ChildFinished,
        RunCompleted,
        RunFailed,
        RunCanceled,
        RunResumed,
    )
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (type, from_version) -> function producing the data of from_version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


@upcaster("step_failed", 0)
def _step_failed_v0(data: dict[str, Any]) -> dict[str, Any]:
    """Pre-release step_failed had ``retry_at`` instead of ``final``."""
    data = dict(data)
    data["final"] = data.pop("retry_at", None) is None
    data.setdefault("kind", "function")
    return data


def upcast(event_type: str, schema_version: int, data: dict[str, Any]) -> dict[str, Any]:
    cls = EVENT_TYPES[event_type]
    version = schema_version
    while version < cls.SCHEMA_VERSION:
        step = UPCASTERS.get((event_type, version))
        if step is None:
            raise ValueError(f"no upcaster for {event_type} v{version}")
        data = step(data)
        version += 1
    return data


def decode_data(event_type: str, schema_version: int, data: dict[str, Any]) -> EventData:
    """Typed event data from a stored (possibly older) event."""
    cls = EVENT_TYPES[event_type]
    return msgspec.convert(upcast(event_type, schema_version, data), cls)


def to_dict(event: EventData) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(event)
    return result
