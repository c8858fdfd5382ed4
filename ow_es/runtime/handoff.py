"""Starts handed to a worker of the same client.

A run started by a client whose own worker serves the workflow and has a slot free is created
already claimed by that worker: ``run_created`` and ``run_claimed`` in the start's one
transaction (the claim event a claim would write, its lease counted from the client's clock,
the clock of the worker that holds it). The worker then executes the run from the
row the start returned, with no wake-up and no claim of its own: one commit between
``start()`` and the first step instead of two.

Only a start the worker's own claim would take at once is handed over: due now, no
idempotency key (a key may name a run that exists already), a workflow with no limits declared
in code and none stored (as of the worker's last claim), and a slot free that no claim in
flight counts on (``Worker.reserve``). A slot is held from before the start is sent; a start
that fails or returns another run gives it back. A worker that stopped claiming meanwhile
hands the run back at once, as a stopping worker does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.store.port import Appended, AppendRequest, Outcome

if TYPE_CHECKING:
    from ow_es.runtime.worker import Worker


@dataclass
class Handoff:
    """A slot of ``worker`` held for one run being started, and the claim that takes it."""

    worker: Worker
    claim: ev.RunClaimed
    lease_deadline: float  # the event loop's clock: the lease runs from before the start

    def claiming(self, request: AppendRequest) -> AppendRequest:
        """The start request, the run claimed by the worker in the same append."""
        return AppendRequest(run_id=request.run_id, events=[*request.events, self.claim])

    def deliver(self, outcome: Outcome) -> None:
        """The run to the worker if the start created it under this claim (also when the
        start was sent again after a lost reply); else the slot back."""
        if isinstance(outcome, Appended) and outcome.run.claim_token == self.claim.claim_token:
            self.worker.adopt(outcome.run, self.lease_deadline)
        else:
            self.worker.unreserve()

    def cancel(self) -> None:
        """The start failed: the slot back."""
        self.worker.unreserve()


def reserve(
    workers: list[Worker], name: str, version: str | None, *, limited: bool
) -> Handoff | None:
    """A slot of a worker of this client that serves ``(name, version)`` and would claim the
    run at once, or None. ``limited``: the workflow declares limits (they need the claim)."""
    if limited:
        return None
    for worker in workers:
        lease_deadline = worker.reserve((name, version))
        if lease_deadline is not None:
            claim = ev.RunClaimed(
                worker_id=worker.worker_id,
                claim_token=uuid.uuid4().hex,
                lease_until=utcnow() + timedelta(seconds=worker.lease),
            )
            return Handoff(worker, claim, lease_deadline)
    return None
