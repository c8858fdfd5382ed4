"""The rules of claiming: which ready runs a worker takes (within the limits in force), and
which it fails instead because their deadline passed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from ow_es import events as ev
from ow_es.models import WorkflowRun
from ow_es.store import flow
from ow_es.store.port import Appended, AppendRequest, Claimed, Primitives, WorkflowKey
from ow_es.store.rules import apply

_CLAIM_ROUNDS = 3  # selects per claim when limits leave candidates over


def claim_event(
    row: WorkflowRun, worker_id: str, now: datetime, lease_seconds: float
) -> ev.EventData:
    """A due run is claimed; one past its deadline is failed instead."""
    if row.deadline_at is not None and row.deadline_at <= now:
        return ev.RunFailed(
            error={"type": "DeadlineExceeded", "message": "deadline exceeded"},
            reason="deadline exceeded",
            worker_id=worker_id,
        )
    return ev.RunClaimed(
        worker_id=worker_id,
        claim_token=uuid.uuid4().hex,
        lease_until=now + timedelta(seconds=lease_seconds),
    )


async def claim(
    tx: Primitives, worker_id: str, workflows: Sequence[WorkflowKey], limit: int, lease: float
) -> Claimed:
    """Claim up to ``limit`` ready runs that the limits in force let through; ready runs past
    their deadline are failed instead. The query leaves out runs whose limit is full; when
    several candidates of one limit fill it within the batch, the ones left over are replaced
    by the next eligible runs (a few rounds, each seeing this transaction's claims)."""
    claimed = Claimed(runs=[])
    taken: list[str] = []
    for _ in range(_CLAIM_ROUNDS):
        ready = await tx.select_ready(workflows, limit - len(claimed.runs), taken)
        taken.extend(row.id for row in ready.rows)
        rows, left = ready.rows, 0
        if ready.limits:
            claimed.limited = True
            keys = flow.keys_of(rows, ready.limits)
            usage = await tx.flow_usage(sorted(ready.limits), keys)
            rows, left = flow.admit(rows, ready.limits, usage, await tx.now())
            claimed.retry_at = flow.window_frees_at(ready.limits, usage)
        claimed.runs.extend(await _claim_rows(tx, rows, worker_id, lease))
        if not left or len(claimed.runs) >= limit:
            break
    return claimed


async def _claim_rows(
    tx: Primitives, rows: list[WorkflowRun], worker_id: str, lease: float
) -> list[WorkflowRun]:
    if not rows:
        return []
    now = tx.time.marker
    requests = [
        AppendRequest(run_id=row.id, events=[claim_event(row, worker_id, now, lease)])
        for row in rows
    ]
    outcomes = await apply(tx, requests, locked={row.id: row for row in rows})
    return [o.run for o in outcomes if isinstance(o, Appended) and o.run.claim_token is not None]


async def fail_overdue(
    tx: Primitives, worker_id: str, workflows: Sequence[WorkflowKey], limit: int
) -> int:
    """Fail unclaimed runs past their deadline (a worker whose slots are all busy still
    ends them on time); returns how many."""
    rows = await tx.select_overdue(workflows, limit)
    now = tx.time.marker
    requests = [
        AppendRequest(run_id=row.id, events=[claim_event(row, worker_id, now, 0)])
        for row in rows
        if row.deadline_at is not None and row.deadline_at <= now
    ]
    outcomes = await apply(tx, requests, locked={row.id: row for row in rows})
    return sum(isinstance(o, Appended) for o in outcomes)
