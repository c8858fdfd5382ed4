"""One write transaction, written once for both adapters.

An adapter subclasses :class:`Transaction` with a few SQL primitives (insert a run row, lock
rows, write a plan, the lookups below); the rules of appending, claiming and delivering
signals live here and in ``planner``.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from ow_es import events as ev
from ow_es.errors import ConcurrencyError
from ow_es.models import StepAttempt, WorkflowRun
from ow_es.store.planner import (
    Plan,
    claim_requests,
    claimed_runs,
    is_create,
    merge,
    plan_create,
    plan_updates,
    split_rounds,
)
from ow_es.store.port import Appended, AppendRequest, Outcome, WorkflowKey


class Transaction(abc.ABC):
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.ready = False  # some run became ready: wake workers after commit
        self.done: list[str] = []  # runs that ended: wake their result() waiters

    # -- primitives of an adapter ----------------------------------------------------------

    @abc.abstractmethod
    async def clock(self) -> datetime:
        """The transaction's time: every event it appends gets this ``created_at``."""

    @abc.abstractmethod
    async def insert_runs(self, runs: list[WorkflowRun]) -> set[str]:
        """Insert new run rows; returns the ids inserted (a taken idempotency key inserts
        nothing). ``created_at``/``updated_at`` are the transaction's :meth:`clock`, which an
        adapter may let the database fill in (the rows may carry a placeholder)."""

    @abc.abstractmethod
    async def find_by_key(self, workflow_name: str, key: str | None) -> WorkflowRun | None: ...

    @abc.abstractmethod
    async def lock_runs(self, run_ids: list[str]) -> dict[str, WorkflowRun]:
        """The current rows of these runs, locked until commit."""

    @abc.abstractmethod
    async def write(self, plan: Plan) -> None:
        """Insert the plan's events, update its run rows, upsert its step rows."""

    @abc.abstractmethod
    async def claim_ready(self, workflows: Sequence[WorkflowKey], limit: int) -> list[WorkflowRun]:
        """Lock up to ``limit`` ready runs of ``workflows`` (skipping rows locked by others)."""

    @abc.abstractmethod
    async def open_signal_waits(self, signal_name: str) -> list[StepAttempt]: ...

    @abc.abstractmethod
    async def live_children(self, parent_ids: list[str]) -> list[str]:
        """Ids of the non-terminal children of these runs."""

    @abc.abstractmethod
    async def claim_signal_key(self, key: str, signal_name: str) -> bool:
        """Take an idempotency key for a send; False when an earlier send holds it."""

    @abc.abstractmethod
    async def signal_send(self, key: str, signal_name: str) -> list[str]: ...

    @abc.abstractmethod
    async def record_signal_send(self, key: str, signal_name: str, run_ids: list[str]) -> None: ...

    # -- the rules -------------------------------------------------------------------------

    async def apply(
        self, requests: Sequence[AppendRequest], locked: dict[str, WorkflowRun] | None = None
    ) -> list[Outcome]:
        """Append every request; each gets its own outcome. A run's end is told to its
        parent in the same transaction. ``locked``: rows this transaction already locked."""
        indexed = list(enumerate(requests))
        outcomes: dict[int, Outcome] = {}
        next_index = len(indexed)
        while indexed:
            follow_ups: list[AppendRequest] = []
            for round_ in split_rounds(indexed):
                plan = await self._plan_round(round_, locked)
                locked = None  # later rounds see this round's writes: lock and read again
                await self.write(plan)
                outcomes.update(plan.outcomes)
                follow_ups.extend(plan.follow_ups)
                self.ready = self.ready or plan.ready
                self.done.extend(plan.done)
            indexed = [(next_index + i, r) for i, r in enumerate(follow_ups)]
            next_index += len(follow_ups)
        return [outcomes[i] for i in range(len(requests))]

    async def _plan_round(
        self, round_: list[tuple[int, AppendRequest]], locked: dict[str, WorkflowRun] | None
    ) -> Plan:
        plan = Plan()
        updates = [(i, r) for i, r in round_ if not is_create(r)]
        creates = [(i, r) for i, r in round_ if is_create(r)]
        if creates:
            # The rows go in before the clock is read: one round trip for both on Postgres.
            drafts = [_draft(self.namespace, request) for _, request in creates]
            inserted = await self.insert_runs(drafts)
            now = await self.clock()
            for index, request in creates:
                if request.run_id in inserted:
                    created, run = plan_create(self.namespace, now, request)
                    created.outcomes[index] = Appended(run=run, created=True, first_seq=1)
                    merge(plan, created)
                else:
                    plan.outcomes[index] = await self._existing(request)
        if updates:
            ids = [r.run_id for _, r in updates]
            if locked is not None and all(run_id in locked for run_id in ids):
                rows = locked
            else:
                rows = await self.lock_runs(ids)
            merge(plan, plan_updates(self.namespace, await self.clock(), updates, rows))
        return plan

    async def _existing(self, request: AppendRequest) -> Outcome:
        """The run that holds the idempotency key a create collided with."""
        data = request.events[0]
        assert isinstance(data, ev.RunCreated)
        existing = await self.find_by_key(data.workflow_name, data.idempotency_key)
        if existing is None:
            return ConcurrencyError(f"run id {request.run_id} is already taken")
        return Appended(run=existing, created=False)

    async def claim(
        self, worker_id: str, workflows: Sequence[WorkflowKey], limit: int, lease_seconds: float
    ) -> list[WorkflowRun]:
        rows = await self.claim_ready(workflows, limit)
        if not rows:
            return []
        requests = claim_requests(rows, worker_id, await self.clock(), lease_seconds)
        return claimed_runs(await self.apply(requests, locked={row.id: row for row in rows}))

    async def cancel(self, run_id: str, *, cascade: bool) -> Outcome:
        """Cancel a run and, with ``cascade``, its descendants, all in this transaction. Each
        level is canceled (its rows locked) before its children are read, so a child being
        created meanwhile either commits first and is found, or finds its parent canceled."""
        (outcome,) = await self.apply([_cancel_request(run_id, None)])
        if not isinstance(outcome, Appended) or not cascade:
            return outcome
        frontier = [run_id]
        while frontier:
            children = await self.live_children(frontier)
            outcomes = await self.apply([_cancel_request(c, run_id) for c in children])
            frontier = [
                c for c, o in zip(children, outcomes, strict=True) if isinstance(o, Appended)
            ]
        return outcome

    async def deliver_signal(
        self,
        signal_name: str,
        data: Any,
        idempotency_key: str | None,
        sender: AppendRequest | None = None,
        sender_step: str | None = None,
    ) -> Delivery:
        """Deliver to every open wait on ``signal_name`` (each at most once), record the send
        on the sender run if any; all in this transaction. A repeated key delivers nothing."""
        if idempotency_key is not None and not await self.claim_signal_key(
            idempotency_key, signal_name
        ):
            return Delivery(run_ids=await self.signal_send(idempotency_key, signal_name))
        waits = await self.open_signal_waits(signal_name)
        sender_id = sender.run_id if sender is not None else None
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
                        idempotency_key=idempotency_key,
                        sender_run_id=sender_id,
                    )
                ],
            )
            for wait in waits
            if wait.run_id != sender_id
        ]
        outcomes = await self.apply(deliveries)
        sent: Appended | None = None
        delivered = sorted(
            {d.run_id for d, o in zip(deliveries, outcomes, strict=True) if isinstance(o, Appended)}
        )
        if sender is not None:
            sender.events.append(
                ev.SignalSent(
                    step_name=sender_step or f"send:{signal_name}",
                    signal_name=signal_name,
                    data=data,
                    delivered_to=delivered,
                    idempotency_key=idempotency_key,
                    worker_id=_worker_of(sender),
                )
            )
            for event in sender.events:
                if isinstance(event, ev.StepCompleted) and event.kind == "signal_send":
                    event.output = delivered
            (outcome,) = await self.apply([sender])
            if not isinstance(outcome, Appended):
                raise outcome  # rolls the deliveries back with it
            sent = outcome
        if idempotency_key is not None:
            await self.record_signal_send(idempotency_key, signal_name, delivered)
        return Delivery(run_ids=delivered, sender=sent)


T = TypeVar("T")


@dataclass
class Delivery:
    """Where a signal went, and the sender run's append (a send from a workflow step)."""

    run_ids: list[str]
    sender: Appended | None = None


def _cancel_request(run_id: str, cascaded_from: str | None) -> AppendRequest:
    return AppendRequest(
        run_id=run_id, events=[ev.RunCanceled(reason="canceled", cascaded_from=cascaded_from)]
    )


def _draft(namespace: str, request: AppendRequest) -> WorkflowRun:
    """A new run's row before the transaction's time is known (it is filled in on insert)."""
    data = request.events[0]
    assert isinstance(data, ev.RunCreated)
    return plan_create(namespace, data.available_at, request)[1]


def _worker_of(request: AppendRequest) -> str | None:
    for event in request.events:
        worker = getattr(event, "worker_id", None)
        if worker is not None:
            return str(worker)
    return None


class TransactionalStore(abc.ABC):
    """The store operations that are one transaction of :class:`Transaction` rules; an
    adapter provides ``run``."""

    @abc.abstractmethod
    async def run(self, what: str, fn: Callable[[Transaction], Awaitable[T]]) -> T: ...

    async def append(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        return await self.run("appending events", lambda tx: tx.apply(requests))

    async def claim(
        self, worker_id: str, workflows: Sequence[WorkflowKey], limit: int, lease_seconds: float
    ) -> list[WorkflowRun]:
        if limit <= 0 or not workflows:
            return []
        return await self.run(
            "claiming runs", lambda tx: tx.claim(worker_id, workflows, limit, lease_seconds)
        )
