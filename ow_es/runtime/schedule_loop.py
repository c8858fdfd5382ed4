"""A worker's schedule loop: it fires the due ticks of the schedules its client registered."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ow_es.durations import utcnow
from ow_es.errors import OwEsError
from ow_es.metrics import WorkerMetrics

if TYPE_CHECKING:
    from ow_es.client import OpenWorkflow

log = logging.getLogger("ow_es.worker")


async def fire_schedules(
    client: OpenWorkflow, poll_interval: float, metrics: WorkerMetrics | None
) -> None:
    """Fire the due ticks of the schedules registered on this client: every worker may
    fire (due rows are locked, skipping locked ones; the tick's idempotency key keeps each
    tick one run), then wait for the next due tick or the poll interval."""
    store = client.store
    rows = client.schedule_rows(utcnow())
    if not rows:
        return
    names = [row.name for row in rows]
    try:
        await store.schedules.upsert(rows)
    except OwEsError as exc:
        log.warning("could not record the schedules: %s", exc)
    while True:
        try:
            fired = await store.fire_schedules(names)
            for name, run_id, key in fired.started:
                log.info("schedule %s: started run %s (%s)", name, run_id, key)
            for name in fired.skipped:
                log.info("schedule %s: tick skipped, its previous run is not done", name)
            if metrics is not None:
                metrics.fired([s[0] for s in fired.started], fired.skipped)
            next_due = await store.schedules.next_due(names)
        except OwEsError as exc:
            log.warning("firing schedules failed: %s", exc)
            next_due = None
        wait = poll_interval
        if next_due is not None:
            wait = min(wait, max(0.0, (next_due - utcnow()).total_seconds()))
        await asyncio.sleep(max(wait, 0.01))
