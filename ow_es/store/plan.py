"""What an append writes: its events folded onto the run's row by the projections, once.

Pure code: the rules (``rules.py``) decide what is accepted and call these to fold it; an
adapter writes the resulting :class:`Plan` as it is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from ow_es import events as ev
from ow_es.models import StepAttempt, WorkflowRun
from ow_es.projections import Recorded, apply_run, step_row
from ow_es.store.port import AppendRequest, Outcome, WorkflowKey


@dataclass
class Plan:
    """Writes of one round, in log order."""

    events: list[Recorded] = field(default_factory=list)
    updated_runs: list[tuple[WorkflowRun, WorkflowRun]] = field(default_factory=list)  # old, new
    steps: list[StepAttempt] = field(default_factory=list)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    follow_ups: list[AppendRequest] = field(default_factory=list)
    # Runs made ready (or created, due later): run id -> (workflow name, version).
    ready: dict[str, WorkflowKey] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)

    def merge(self, other: Plan) -> None:
        self.events.extend(other.events)
        self.updated_runs.extend(other.updated_runs)
        self.steps.extend(other.steps)
        self.outcomes.update(other.outcomes)
        self.follow_ups.extend(other.follow_ups)
        self.ready.update(other.ready)
        self.done.extend(other.done)


ENDINGS = (ev.RunCanceled, ev.RunFailed)  # ends that close the run's open attempts


def start_request(
    workflow_name: str,
    version: str | None,
    input: Any,
    *,
    idempotency_key: str | None,
    available_at: datetime,
    deadline_at: datetime | None = None,
    key: str | None = None,
    priority: int = 0,
) -> AppendRequest:
    """The request that starts a run (a client's ``start``, a schedule's tick): a new run id
    and one ``RunCreated`` event."""
    return AppendRequest(
        run_id=uuid.uuid4().hex,
        events=[
            ev.RunCreated(
                workflow_name=workflow_name,
                version=version,
                input=input,
                idempotency_key=idempotency_key,
                available_at=available_at,
                deadline_at=deadline_at,
                key=key,
                priority=priority,
            )
        ],
    )


def is_create(request: AppendRequest) -> bool:
    return bool(request.events) and isinstance(request.events[0], ev.RunCreated)


def split_rounds(
    requests: list[tuple[int, AppendRequest]],
) -> list[list[tuple[int, AppendRequest]]]:
    """Rounds in which each run appears at most once, keeping each run's request order."""
    rounds: list[list[tuple[int, AppendRequest]]] = []
    seen_in: dict[str, int] = {}
    for item in requests:
        run_id = item[1].run_id
        index = seen_in.get(run_id, -1) + 1
        seen_in[run_id] = index
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(item)
    return rounds


def fold(
    plan: Plan, row: WorkflowRun | None, request: AppendRequest, now: datetime, namespace: str
) -> WorkflowRun:
    """Add the request's events (at ``now``) to the plan; returns the run's row after them."""
    first_seq = 1 if row is None else row.seq + 1
    new = row
    for offset, data in enumerate(request.events):
        rec = Recorded(
            namespace_id=namespace,
            run_id=request.run_id,
            seq=first_seq + offset,
            created_at=now,
            data=data,
        )
        plan.events.append(rec)
        new = apply_run(new, rec)
        step = step_row(rec)
        if step is not None:
            plan.steps.append(step)
    assert new is not None
    _note_transitions(plan, row, new, now)
    return new


def naming_child(request: AppendRequest, child_id: str) -> AppendRequest:
    """The request, its events naming ``child_id`` as the child they started."""
    events = [
        msgspec.structs.replace(e, child_run_id=child_id) if hasattr(e, "child_run_id") else e
        for e in request.events
    ]
    return msgspec.structs.replace(request, events=events)


def with_send(request: AppendRequest, delivered: list[str]) -> AppendRequest:
    """The sender's record of a send: its step's output and a ``SignalSent`` event name the
    runs the signal reached (known only inside the transaction)."""
    assert request.signal is not None
    send = request.signal
    events: list[ev.EventData] = []
    worker_id = None
    for event in request.events:
        if isinstance(event, ev.StepCompleted) and event.kind == "signal_send":
            event = msgspec.structs.replace(event, output=delivered)
        worker_id = getattr(event, "worker_id", None) or worker_id
        events.append(event)
    events.append(
        ev.SignalSent(
            step_name=send.step_name,
            signal_name=send.signal_name,
            data=send.data,
            delivered_to=delivered,
            idempotency_key=None,
            worker_id=worker_id,
        )
    )
    return AppendRequest(
        run_id=request.run_id,
        events=events,
        claim_token=request.claim_token,
        expected_seq=request.expected_seq,
    )


def closing_first(request: AppendRequest, attempts: list[StepAttempt]) -> AppendRequest:
    """A run that is canceled or fails closes its open step attempts with it (recorded as
    abandoned: they never count against a budget, and a resumed run takes them up again)."""
    end = next(e for e in request.events if isinstance(e, ENDINGS))
    status = "canceled" if isinstance(end, ev.RunCanceled) else "failed"
    error = {"type": "RunEnded", "message": f"the run was {status} while this step was open"}
    closed: list[ev.EventData] = [
        ev.StepFailed(
            step_name=a.step_name,
            kind=a.kind,
            attempt=a.attempt,
            error=error,
            started_at=a.started_at,
            final=False,
            abandoned=True,
            child_run_id=a.child_run_id,
            signal_name=a.signal_name,
            worker_id=getattr(end, "worker_id", None),
        )
        for a in attempts
    ]
    at = request.events.index(end)
    events = [*request.events[:at], *closed, *request.events[at:]]
    return msgspec.structs.replace(request, events=events)


def _ready(row: WorkflowRun, now: datetime) -> bool:
    return (
        not row.is_terminal
        and row.claim_token is None
        and row.available_at is not None
        and row.available_at <= now
    )


def _note_transitions(plan: Plan, old: WorkflowRun | None, new: WorkflowRun, now: datetime) -> None:
    if _ready(new, now) or (old is None and new.available_at is not None):
        # A new run, due now or later: a worker claims it, or re-arms its timer.
        plan.ready[new.id] = (new.workflow_name, new.version)
    if new.is_terminal and (old is None or not old.is_terminal):
        plan.done.append(new.id)
        if new.parent_run_id is not None and new.parent_step_name is not None:
            # A run's end is told to its parent in the same transaction.
            plan.follow_ups.append(
                AppendRequest(
                    run_id=new.parent_run_id,
                    events=[
                        ev.ChildFinished(
                            step_name=new.parent_step_name,
                            child_run_id=new.id,
                            status=new.status,
                            output=new.output,
                            error=new.error,
                        )
                    ],
                )
            )
