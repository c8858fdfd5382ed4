"""A worker's held runs: runs it parked on a sleep or a wait for a signal whose workflow
function it keeps suspended there, so that its next claim of the run goes on from there instead
of replaying the function from the top (whose cost grows with the run's history).

The run is parked in the database exactly as without holding (its wait recorded, its claim let
go): any worker may claim it when it is due. A claim by this worker continues the held function
when the run is the same one and its events since the park hold no other claim: then they are
folded into the execution's history (the signal it waits for, say; just the claim after a sleep,
taken from the claimed row without a read) and the wait looks again. After another claim came
between, an eviction (more held runs than ``max_runs``, least recently parked first) or the
worker stopping, the held function unwinds as a park always does, writing nothing, and the run
is replayed as usual wherever it is claimed.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ow_es import events as ev
from ow_es.errors import StoreUnavailable
from ow_es.models import WorkflowRun
from ow_es.runtime.replay_cache import follows
from ow_es.store import Store


class Holding(Protocol):
    """An execution whose body waits, suspended, for the next claim of its run."""

    def may_resume(self, run: WorkflowRun) -> bool: ...

    def let_go(self) -> asyncio.Future[Any] | None:
        """Unwind the held function; returns its task (it unwinds on the next loop turns)."""
        ...


class HeldRuns:
    """Held executions by run id, least recently parked first, at most ``max_runs``."""

    def __init__(self, max_runs: int) -> None:
        if max_runs < 1:
            raise ValueError("holding parked runs needs room for at least one (0 turns it off)")
        self.max_runs = max_runs
        self._entries: OrderedDict[str, Holding] = OrderedDict()
        self.resumed = 0  # claims that went on with a held function (``went_on``)

    def __len__(self) -> int:
        return len(self._entries)

    def keep(self, run_id: str, execution: Holding) -> None:
        """Hold ``execution`` (its run just parked: any earlier entry of the run was taken by
        the claim it parked under); let the oldest go while over the bound."""
        self._entries[run_id] = execution
        while len(self._entries) > self.max_runs:
            _, evicted = self._entries.popitem(last=False)
            evicted.let_go()

    def take(self, run: WorkflowRun) -> Holding | None:
        """The held execution for this claim of ``run``, to resume (which goes on with it or
        replays); None when there is none or it cannot be the run's (it is let go)."""
        execution = self._entries.pop(run.id, None)
        if execution is None:
            return None
        if not execution.may_resume(run):
            execution.let_go()
            return None
        return execution

    def went_on(self) -> None:
        """A resumed execution went on with its held function."""
        self.resumed += 1

    def let_go_all(self) -> list[asyncio.Future[Any]]:
        """The worker stops: unwind every held function; their tasks, to await."""
        bodies = []
        while self._entries:
            _, execution = self._entries.popitem(last=False)
            body = execution.let_go()
            if body is not None:
                bodies.append(body)
        return bodies


@dataclass(frozen=True)
class HistoryEvent:
    """An event of the run, decoded, to fold into a held execution's history."""

    seq: int
    created_at: datetime
    data: ev.EventData


async def events_since(store: Store, parked_at: int, run: WorkflowRun) -> list[HistoryEvent] | None:
    """The run's events after a park at ``parked_at`` up to this claim of ``run``: the claim
    alone (from its row, no read) or whatever was appended before it (read); None when they
    hold another claim (or cannot be read: the replay's own read decides then)."""
    if run.seq == parked_at + 1:
        assert run.claim_token is not None and run.worker_id is not None
        claimed = ev.RunClaimed(
            worker_id=run.worker_id,
            claim_token=run.claim_token,
            lease_until=run.lease_until or run.updated_at,
        )
        return [HistoryEvent(run.seq, run.updated_at, claimed)]
    try:
        newer = await store.read_run_events(run.id, after=parked_at)
    except StoreUnavailable:
        return None
    if not follows(parked_at, newer, run):
        return None
    return [
        HistoryEvent(e.seq, e.created_at, ev.decode_data(e.type, e.schema_version, e.data))
        for e in newer
    ]
