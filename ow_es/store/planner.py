"""What one append transaction writes, decided in pure code shared by both adapters.

An adapter locks the rows of the runs involved, hands them here, writes what the plan says and
reports the outcomes. Every rule about which appends are accepted lives in this module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ow_es import events as ev
from ow_es.errors import ConcurrencyError, InvalidTransition, RunNotFound, StaleRun
from ow_es.models import StepAttempt, WorkflowRun
from ow_es.projections import Recorded, apply_run, step_row
from ow_es.store.port import Appended, AppendRequest, Outcome


@dataclass
class Plan:
    """Writes of one round, in log order."""

    events: list[Recorded] = field(default_factory=list)
    updated_runs: list[tuple[WorkflowRun, WorkflowRun]] = field(default_factory=list)  # old, new
    steps: list[StepAttempt] = field(default_factory=list)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    follow_ups: list[AppendRequest] = field(default_factory=list)
    ready: bool = False
    done: list[str] = field(default_factory=list)


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


def _rejection(row: WorkflowRun | None, request: AppendRequest) -> Exception | None:
    if row is None:
        return RunNotFound(f"run {request.run_id} not found")
    first = request.events[0]
    if request.claim_token is not None and (
        row.claim_token != request.claim_token or row.status != "running"
    ):
        return ConcurrencyError(f"run {row.id} is no longer held by this claim ({row.status})")
    if request.expected_seq is not None and row.seq != request.expected_seq:
        return StaleRun(f"run {row.id} changed (seq {row.seq}, expected {request.expected_seq})")
    if isinstance(first, ev.RunResumed):
        if row.status != "failed":
            return InvalidTransition(f"run {row.id} is {row.status}; only a failed run resumes")
        return None
    if row.is_terminal:
        return InvalidTransition(f"run {row.id} is already {row.status}")
    return None


def _ready(row: WorkflowRun, now: datetime) -> bool:
    return (
        not row.is_terminal
        and row.claim_token is None
        and row.available_at is not None
        and row.available_at <= now
    )


def _fold(
    plan: Plan, row: WorkflowRun | None, request: AppendRequest, now: datetime, namespace: str
) -> WorkflowRun:
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
    return new


def _note_transitions(plan: Plan, old: WorkflowRun | None, new: WorkflowRun, now: datetime) -> None:
    if _ready(new, now) or (old is None and new.available_at is not None):
        plan.ready = True  # a new run, due now or later: idle workers re-arm their timers
    if new.is_terminal and (old is None or not old.is_terminal):
        plan.done.append(new.id)
        if new.parent_run_id is not None and new.parent_step_name is not None:
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


def plan_updates(
    namespace: str,
    now: datetime,
    requests: list[tuple[int, AppendRequest]],
    rows: dict[str, WorkflowRun],
) -> Plan:
    """Plan appends to existing runs whose current (locked) rows are ``rows``."""
    plan = Plan()
    for index, request in requests:
        row = rows.get(request.run_id)
        rejection = _rejection(row, request)
        if rejection is not None:
            plan.outcomes[index] = rejection
            continue
        assert row is not None
        new = _fold(plan, row, request, now, namespace)
        plan.updated_runs.append((row, new))
        plan.outcomes[index] = Appended(run=new, first_seq=row.seq + 1)
        _note_transitions(plan, row, new, now)
    return plan


def plan_create(namespace: str, now: datetime, request: AppendRequest) -> tuple[Plan, WorkflowRun]:
    """Plan a new run; the adapter inserts the row first and drops the plan on a key clash."""
    plan = Plan()
    new = _fold(plan, None, request, now, namespace)
    _note_transitions(plan, None, new, now)
    return plan, new


def claim_requests(
    rows: Iterable[WorkflowRun], worker_id: str, now: datetime, lease_seconds: float
) -> list[AppendRequest]:
    """Claims for due runs; a run past its deadline is failed instead of claimed."""
    requests = []
    lease_until = now + timedelta(seconds=lease_seconds)
    for row in rows:
        if row.deadline_at is not None and row.deadline_at <= now:
            data: ev.EventData = ev.RunFailed(
                error={"type": "DeadlineExceeded", "message": "deadline exceeded"},
                reason="deadline exceeded",
                worker_id=worker_id,
            )
        else:
            data = ev.RunClaimed(
                worker_id=worker_id, claim_token=uuid.uuid4().hex, lease_until=lease_until
            )
        requests.append(AppendRequest(run_id=row.id, events=[data]))
    return requests


def claimed_runs(outcomes: list[Outcome]) -> list[WorkflowRun]:
    """The runs a claim batch holds (a run past its deadline was failed instead)."""
    return [o.run for o in outcomes if isinstance(o, Appended) and o.run.claim_token is not None]


def merge(into: Plan, other: Plan) -> None:
    into.events.extend(other.events)
    into.updated_runs.extend(other.updated_runs)
    into.steps.extend(other.steps)
    into.outcomes.update(other.outcomes)
    into.follow_ups.extend(other.follow_ups)
    into.ready = into.ready or other.ready
    into.done.extend(other.done)
