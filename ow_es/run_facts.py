"""What a run's row implies without holding it, shown by ``ow-es runs`` and the dashboard: the
schedule a run came from (read from its idempotency key) and the limit that keeps a ready run
waiting."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ow_es.models import WorkflowRun
from ow_es.store import Store

# ``schedule.tick_key``: ``schedule:<name>:<tick, ISO-8601 UTC>``; a trigger by hand
# (``scheduling.trigger``): ``schedule:<name>:manual:<uuid hex>``. A name may hold colons:
# the tail decides.
_SCHEDULED = re.compile(
    r"^schedule:(?P<name>.+):"
    r"(?:manual:[0-9a-f]{32}|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?\+00:00)$",
    re.DOTALL,
)


def schedule_of(run: WorkflowRun | str | None) -> str | None:
    """The name of the schedule that started ``run`` (a run or its idempotency key), by a tick
    or by a trigger; None for a run started otherwise."""
    key = run.idempotency_key if isinstance(run, WorkflowRun) else run
    match = _SCHEDULED.match(key) if key else None
    return match.group("name") if match else None


async def held_back(store: Store, runs: Sequence[WorkflowRun]) -> dict[str, str]:
    """Why each of ``runs`` that is ready but held back by a limit waits, by run id. Only the
    waiting runs of workflows with stored limits are looked at (a page of runs costs one read
    of the limits, and two reads per such run)."""
    waiting = [run for run in runs if not run.is_terminal and run.claim_token is None]
    if not waiting:
        return {}
    limited = {stored.workflow_name for stored in await store.limits.stored()}
    reasons: dict[str, str] = {}
    for run in waiting:
        if run.workflow_name in limited:
            reason = await store.held_back(run)
            if reason is not None:
                reasons[run.id] = reason
    return reasons
