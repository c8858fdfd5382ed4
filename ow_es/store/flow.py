"""Flow control in the claim: which ready runs the limits in force let a claim take.

Places are read from the runs projection itself: a run holds a place while it has a claim
token (from ``run_claimed`` until it parks, is released or ends), and it started when it was
first claimed (``started_at``). Both are folded inline with every append and rebuilt by
``reproject`` like any column, so the counts need no table of their own, and no counter row
that every claim and every end of a workflow's runs would have to update.

The adapters filter out runs whose limit is already full in the claim's query; this module
decides within one batch, where several candidates of one workflow or key compete.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ow_es.limits import Limits
from ow_es.models import WorkflowRun


@dataclass
class Count:
    held: int = 0  # runs holding a place now
    started: int = 0  # first claims inside the rate window
    oldest_start: datetime | None = None  # the oldest of those


@dataclass
class Usage:
    """Places held and recent starts, per workflow and per (workflow, key)."""

    workflows: dict[str, Count] = field(default_factory=dict)
    keys: dict[tuple[str, str], Count] = field(default_factory=dict)

    def of(self, workflow: str) -> Count:
        return self.workflows.setdefault(workflow, Count())

    def of_key(self, workflow: str, key: str) -> Count:
        return self.keys.setdefault((workflow, key), Count())


def keys_of(rows: Iterable[WorkflowRun], limits: dict[str, Limits]) -> list[tuple[str, str]]:
    """The (workflow, key) pairs of these runs that a per-key limit applies to."""
    return sorted(
        {
            (r.workflow_name, r.key)
            for r in rows
            if r.key is not None
            and r.workflow_name in limits
            and (limits[r.workflow_name].per_key or limits[r.workflow_name].per_key_rate)
        }
    )


def held_back(row: WorkflowRun, limits: Limits | None, usage: Usage) -> str | None:
    """Why a claim may not take ``row`` now, or None. A run already holding its place (its
    lease expired) takes no new one."""
    if limits is None or row.claim_token is not None:
        return None
    return reason(limits, usage, row.workflow_name, row.key, fresh=row.started_at is None)


def reason(
    limits: Limits, usage: Usage, workflow: str, key: str | None, *, fresh: bool
) -> str | None:
    """Why a run of ``workflow`` with ``key`` may not take a place now (``fresh``: it was
    never claimed, so a rate counts it), or None."""
    count = usage.of(workflow)
    keyed = usage.of_key(workflow, key) if key is not None else None
    if limits.concurrency is not None and count.held >= limits.concurrency:
        return f"concurrency limit {limits.concurrency} reached"
    if limits.per_key is not None and keyed is not None and keyed.held >= limits.per_key:
        return f"per-key limit {limits.per_key} reached for key {key!r}"
    if not fresh:  # rates count first claims only
        return None
    rate = limits.rate_limit
    if rate is not None and count.started >= rate.count:
        return f"rate {limits.rate} reached"
    per_key_rate = limits.per_key_rate_limit
    if per_key_rate is not None and keyed is not None and keyed.started >= per_key_rate.count:
        return f"per-key rate {limits.per_key_rate} reached for key {key!r}"
    return None


def take(row: WorkflowRun, usage: Usage, now: datetime) -> None:
    """Count ``row``'s claim in ``usage``."""
    if row.claim_token is not None:
        return
    counts = [usage.of(row.workflow_name)]
    if row.key is not None:
        counts.append(usage.of_key(row.workflow_name, row.key))
    for count in counts:
        count.held += 1
        if row.started_at is None:
            count.started += 1
            count.oldest_start = count.oldest_start or now


def admit(
    rows: Sequence[WorkflowRun], limits: dict[str, Limits], usage: Usage, now: datetime
) -> tuple[list[WorkflowRun], int]:
    """The rows a claim may take, in order, and how many it had to leave (a limit filled up
    within the batch)."""
    admitted: list[WorkflowRun] = []
    for row in rows:
        if held_back(row, limits.get(row.workflow_name), usage) is None:
            take(row, usage, now)
            admitted.append(row)
    return admitted, len(rows) - len(admitted)


def window_frees_at(limits: dict[str, Limits], usage: Usage) -> datetime | None:
    """When the earliest full rate window lets one more run start (the worker's next claim
    after a claim that rate limits held back)."""
    times: list[datetime] = []
    for name, limit in limits.items():
        rate = limit.rate_limit
        count = usage.workflows.get(name)
        if rate and count and count.oldest_start and count.started >= rate.count:
            times.append(count.oldest_start + timedelta(seconds=rate.seconds))
        per_key = limit.per_key_rate_limit
        if per_key is None:
            continue
        for (workflow, _), keyed in usage.keys.items():
            if workflow == name and keyed.oldest_start and keyed.started >= per_key.count:
                times.append(keyed.oldest_start + timedelta(seconds=per_key.seconds))
    return min(times, default=None)
