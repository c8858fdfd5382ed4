"""Firing schedules: what the due rows locked by ``Schedules.fire`` do, decided in its
transaction. Each tick starts a run through the rules (``rules.apply``) with the idempotency
key ``schedule:<name>:<tick time>``, so a tick makes one run however many workers fire it."""

from __future__ import annotations

from datetime import datetime

from ow_es.schedule import due_ticks, tick_input, tick_key
from ow_es.store import rules
from ow_es.store.plan import start_request
from ow_es.store.port import Appended, Primitives
from ow_es.store.schedules_port import Fired, ScheduleRow


async def decide(tx: Primitives, rows: list[ScheduleRow], now: datetime | None) -> Fired:
    """Start the due ticks of ``rows`` (by their catch-up policy), skip them while the
    previous run of an ``overlap="skip"`` schedule is not terminal, and advance each row."""
    at = now or await tx.now()
    fired = Fired()
    previous = [r.last_run_id for r in rows if r.overlap == "skip" and r.last_run_id]
    last_runs = await tx.lock_runs(sorted(set(previous))) if previous else {}
    for row in rows:
        due = due_ticks(row.cron, row.timezone, row.catch_up, row.next_tick_at, at)
        if due is None:
            continue
        last = last_runs.get(row.last_run_id or "")
        if row.overlap == "skip" and last is not None and not last.is_terminal:
            fired.skipped.extend(row.name for _ in due.ticks)
            fired.advance[row.name] = (due.next_tick_at, None)
            continue
        requests = [
            start_request(
                row.workflow_name,
                row.version,
                tick_input(row.name, tick, row.input, row.tick),
                idempotency_key=tick_key(row.name, tick),
                available_at=tx.time.marker,
            )
            for tick in due.ticks
        ]
        last_id = None
        for tick, outcome in zip(due.ticks, await rules.apply(tx, requests), strict=True):
            if isinstance(outcome, Appended):
                last_id = outcome.run.id
                if outcome.created:
                    fired.started.append((row.name, outcome.run.id, tick_key(row.name, tick)))
        fired.advance[row.name] = (due.next_tick_at, last_id)
    return fired
