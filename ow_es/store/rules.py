"""The rules of writing: which appends, cancellations, resumptions and signal deliveries are
accepted, and what they write (claims: ``claim_rules``; schedule ticks: ``schedule_rules``).

The rules drive an adapter through the port's primitives (lock and read rows, insert, write a
plan, notify); they fold each request once (``plan.fold``) and the adapter writes the plan as it
is. A request that can be decided without reading (a new run, or the claim owner's append
onto the row it last wrote) is planned here and, where the adapter can, written in one
statement that applies only if the row is still as planned; otherwise it takes a transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.errors import ConcurrencyError, InvalidTransition, RunNotFound, StaleRun
from ow_es.models import StepAttempt, WorkflowRun
from ow_es.store.plan import (
    ENDINGS,
    Plan,
    closing_first,
    fold,
    is_create,
    naming_child,
    split_rounds,
    with_send,
)
from ow_es.store.port import (
    Adapter,
    Appended,
    AppendRequest,
    Outcome,
    Primitives,
    Single,
)
from ow_es.store.tables import TxTime

# Owner events whose fold needs no clock, no other run and nothing read (a failure closes the
# run's open attempts, a run with a parent tells it of its end: those take a transaction).
_OWNER_EVENTS = (ev.StepStarted, ev.StepCompleted, ev.StepFailed, ev.RunCompleted)
_MAX_SINGLE_EVENTS = 4  # each shape of one-statement append is a statement text of its own


# -- acceptance --------------------------------------------------------------------------------


def rejection(row: WorkflowRun | None, request: AppendRequest) -> Exception | None:
    """Why ``request`` may not be appended to the run whose current row is ``row``."""
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
        if (row.error or {}).get("type") == "DeadlineExceeded":
            return InvalidTransition(f"run {row.id} failed by its deadline and cannot be resumed")
        return None
    if row.is_terminal:
        return InvalidTransition(f"run {row.id} is already {row.status}")
    return None


def single(namespace: str, request: AppendRequest) -> Single | None:
    """The request planned without reading, if it can be written in one statement."""
    if not request.events or len(request.events) > _MAX_SINGLE_EVENTS or request.compound:
        return None
    time = TxTime(utcnow())
    plan = Plan()
    if is_create(request):
        # A new run alone, or created claimed by a worker of the same client (handoff.py).
        claimed = len(request.events) == 2 and isinstance(request.events[1], ev.RunClaimed)
        if request.claim_token is not None or (len(request.events) != 1 and not claimed):
            return None
        new = fold(plan, None, request, time.marker, namespace)
        return Single(plan=plan, time=time, old=None, new=new, claim_token=None)
    known = request.known
    if (
        known is None
        or request.claim_token is None
        or known.parent_run_id is not None
        or not all(isinstance(e, _OWNER_EVENTS) for e in request.events)
        or rejection(known, request) is not None
    ):
        return None
    new = fold(plan, known, request, time.marker, namespace)
    if plan.follow_ups or plan.ready:
        return None
    return Single(plan=plan, time=time, old=known, new=new, claim_token=request.claim_token)


# -- the write paths ---------------------------------------------------------------------------


class _Rejected(Exception):
    """A compound request was rejected: its transaction rolls back with this outcome."""

    def __init__(self, outcome: Exception) -> None:
        self.outcome = outcome


async def append(adapter: Adapter, requests: Sequence[AppendRequest]) -> list[Outcome]:
    """Append every request; each gets its own outcome (an accepted ``Appended``, or the
    error that rejected it without affecting the others)."""
    outcomes: dict[int, Outcome] = {}
    if adapter.single is not None:
        outcomes.update(await _append_singles(adapter, requests))
    plain = [i for i, r in enumerate(requests) if i not in outcomes and not r.compound]
    if plain:
        batch = [requests[i] for i in plain]
        written = await adapter.transaction("appending events", lambda tx: apply(tx, batch))
        outcomes.update(zip(plain, written, strict=True))
    for index, request in enumerate(requests):
        if request.compound:
            outcomes[index] = await _append_compound(adapter, request)
    return [outcomes[i] for i in range(len(requests))]


async def _append_singles(
    adapter: Adapter, requests: Sequence[AppendRequest]
) -> dict[int, Outcome]:
    # A run named twice in the batch is left to the transaction, which keeps their order.
    counts = Counter(r.run_id for r in requests)
    planned = {
        i: s
        for i, r in enumerate(requests)
        if counts[r.run_id] == 1 and (s := single(adapter.namespace, r)) is not None
    }
    if not planned or adapter.single is None:
        return {}
    order = sorted(planned, key=lambda i: requests[i].run_id)  # rows are locked in id order
    times = await adapter.single.write_singles([planned[i] for i in order])
    return {i: planned[i].written(now) for i, now in zip(order, times, strict=True) if now}


async def _append_compound(adapter: Adapter, request: AppendRequest) -> Outcome:
    """A request that writes another run too (a child it starts, a signal it sends): all or
    nothing, in a transaction of its own."""
    try:
        return await adapter.transaction("appending events", lambda tx: _compound(tx, request))
    except _Rejected as rejected:
        return rejected.outcome


async def _compound(tx: Primitives, request: AppendRequest) -> Appended:
    child: WorkflowRun | None = None
    if request.child is not None:
        (created,) = await apply(tx, [request.child])
        if not isinstance(created, Appended):
            raise _Rejected(created)
        child = created.run
        if child.id != request.child.run_id:  # its key was taken: record the run that has it
            request = naming_child(request, child.id)
    delivered: list[str] | None = None
    if request.signal is not None:
        send = request.signal
        delivered = await _deliver(tx, send.signal_name, send.data, None, skip=request.run_id)
        request = with_send(request, delivered)
    (outcome,) = await apply(tx, [request])
    if not isinstance(outcome, Appended):
        raise _Rejected(outcome)  # rolls the child or the deliveries back with it
    outcome.child, outcome.delivered = child, delivered
    return outcome


async def apply(
    tx: Primitives,
    requests: Sequence[AppendRequest],
    locked: dict[str, WorkflowRun] | None = None,
) -> list[Outcome]:
    """Append every request in ``tx``; a run's end is told to its parent in the same
    transaction. ``locked``: rows this transaction already locked."""
    indexed = list(enumerate(requests))
    outcomes: dict[int, Outcome] = {}
    next_index = len(indexed)
    while indexed:
        follow_ups: list[AppendRequest] = []
        for round_ in split_rounds(indexed):
            plan = await _plan_round(tx, round_, locked)
            locked = None  # later rounds see this round's writes: lock and read again
            await tx.write(plan)
            tx.notify(ready=plan.ready, done=plan.done)
            outcomes.update(plan.outcomes)
            follow_ups.extend(plan.follow_ups)
        indexed = [(next_index + i, r) for i, r in enumerate(follow_ups)]
        next_index += len(follow_ups)
    now = await tx.now()
    return [_stamped(tx.time, outcomes[i], now) for i in range(len(requests))]


def _stamped(time: TxTime, outcome: Outcome, now: datetime) -> Outcome:
    if isinstance(outcome, Appended):
        outcome.run = time.stamped(outcome.run, now)
    return outcome


async def _plan_round(
    tx: Primitives, round_: list[tuple[int, AppendRequest]], locked: dict[str, WorkflowRun] | None
) -> Plan:
    plan = Plan()
    marker = tx.time.marker
    creates = [(i, r) for i, r in round_ if is_create(r)]
    updates = [(i, r) for i, r in round_ if not is_create(r)]
    if creates:
        drafts = []
        for index, request in creates:
            draft = Plan()
            drafts.append((index, request, draft, fold(draft, None, request, marker, tx.namespace)))
        inserted = await tx.insert_runs([new for *_, new in drafts])
        for index, request, draft, new in drafts:
            if new.id in inserted:
                draft.outcomes[index] = Appended(run=new, created=True, first_seq=1)
                plan.merge(draft)
            else:
                plan.outcomes[index] = await _existing(tx, request)
    if updates:
        ids = [r.run_id for _, r in updates]
        if locked is not None and all(run_id in locked for run_id in ids):
            rows = locked
        else:
            rows = await tx.lock_runs(ids)
        closing = await _closing_attempts(tx, [r for _, r in updates])
        for index, request in updates:
            row = rows.get(request.run_id)
            refused = rejection(row, request)
            if refused is not None:
                plan.outcomes[index] = refused
                continue
            assert row is not None
            if request.run_id in closing:
                request = closing_first(request, closing[request.run_id])
            new = fold(plan, row, request, marker, tx.namespace)
            plan.updated_runs.append((row, new))
            plan.outcomes[index] = Appended(run=new, first_seq=row.seq + 1)
    return plan


async def _closing_attempts(
    tx: Primitives, requests: list[AppendRequest]
) -> dict[str, list[StepAttempt]]:
    """The attempts still open on runs that these requests cancel or fail."""
    ending = [r.run_id for r in requests if any(isinstance(e, ENDINGS) for e in r.events)]
    closing: dict[str, list[StepAttempt]] = {}
    if ending:
        for attempt in await tx.open_attempts(ending):
            closing.setdefault(attempt.run_id, []).append(attempt)
    return closing


async def _existing(tx: Primitives, request: AppendRequest) -> Outcome:
    """The run a create collided with: the one holding its idempotency key, or the run with
    its id (the same request, sent again after its first commit's reply was lost)."""
    data = request.events[0]
    assert isinstance(data, ev.RunCreated)
    existing = None
    if data.idempotency_key is not None:
        existing = await tx.find_by_key(data.workflow_name, data.idempotency_key)
    if existing is None:
        existing = (await tx.lock_runs([request.run_id])).get(request.run_id)
    if existing is None or existing.workflow_name != data.workflow_name:
        return ConcurrencyError(f"run id {request.run_id} is already taken")
    return Appended(run=existing, created=False)


async def cancel(tx: Primitives, run_id: str, *, cascade: bool) -> None:
    """Cancel a run and, with ``cascade``, its descendants, in ``tx``. A canceled run stays
    canceled (no error); a completed or failed one raises ``InvalidTransition``. Each level is
    canceled (its rows locked) before its children are read, so a child being created
    meanwhile either commits first and is found, or finds its parent canceled."""
    (outcome,) = await apply(tx, [_cancel_request(run_id, None)])
    if isinstance(outcome, InvalidTransition):
        rows = await tx.lock_runs([run_id])
        if run_id in rows and rows[run_id].status == "canceled":
            return
    if isinstance(outcome, Exception):
        raise outcome
    frontier = [run_id] if cascade else []
    while frontier:
        children = await tx.live_children(frontier)
        outcomes = await apply(tx, [_cancel_request(c, run_id) for c in children])
        frontier = [c for c, o in zip(children, outcomes, strict=True) if isinstance(o, Appended)]


def _cancel_request(run_id: str, cascaded_from: str | None) -> AppendRequest:
    return AppendRequest(
        run_id=run_id, events=[ev.RunCanceled(reason="canceled", cascaded_from=cascaded_from)]
    )


async def resume(tx: Primitives, run_id: str) -> WorkflowRun:
    """A failed run goes on from its failed step (see ``rejection`` for which may)."""
    rows = await tx.lock_runs([run_id])
    row = rows.get(run_id)
    previous = row.error if row is not None else None
    request = AppendRequest(run_id=run_id, events=[ev.RunResumed(previous_error=previous)])
    (outcome,) = await apply(tx, [request], locked=rows)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome.run


async def send_signal(tx: Primitives, signal_name: str, data: Any, key: str | None) -> list[str]:
    """Deliver to every open wait on ``signal_name``, each at most once; a repeated
    idempotency key delivers nothing again and returns where the first send went."""
    if key is not None and not await tx.claim_signal_key(key, signal_name):
        return await tx.signal_send(key, signal_name)
    delivered = await _deliver(tx, signal_name, data, key, skip=None)
    if key is not None:
        await tx.record_signal_send(key, signal_name, delivered)
    return delivered


async def _deliver(
    tx: Primitives, signal_name: str, data: Any, key: str | None, skip: str | None
) -> list[str]:
    waits = await tx.open_signal_waits(signal_name)
    deliveries = [
        AppendRequest(
            run_id=wait.run_id,
            events=[
                ev.SignalReceived(
                    signal_name=signal_name,
                    step_name=wait.step_name,
                    attempt=wait.attempt,
                    started_at=wait.started_at,
                    data=data,
                    idempotency_key=key,
                    sender_run_id=skip,
                )
            ],
        )
        for wait in waits
        if wait.run_id != skip  # a run does not signal itself
    ]
    outcomes = await apply(tx, deliveries)
    return sorted(
        {d.run_id for d, o in zip(deliveries, outcomes, strict=True) if isinstance(o, Appended)}
    )
