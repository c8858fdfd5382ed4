"""The store everything above the adapters uses: writes go through the rules, reads and
lifecycle straight to the adapter."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from time import monotonic
from typing import Any

from ow_es.durations import utcnow
from ow_es.models import Event, RunPage, StepAttempt, WorkflowRun
from ow_es.store import claim_rules, flow, rules, schedule_rules
from ow_es.store.port import (
    Adapter,
    AppendRequest,
    Backlog,
    Claimed,
    LogBatch,
    MinuteCount,
    Outcome,
    PoolStats,
    WakeChannel,
    WorkflowKey,
)
from ow_es.store.rebuild_port import Rebuilder
from ow_es.store.schedules_port import Fired

_TRANSACTION_CLAIMS_SECONDS = 5.0  # after a one-statement claim deferred to the rules


class Store:
    """One database, one namespace, behind an :class:`~ow_es.store.port.Adapter`."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.namespace = adapter.namespace
        self.dialect = adapter.dialect
        self.registry = adapter.registry  # who serves what (coordination, not the log)
        self.retention = adapter.retention  # deleting old run trees, importing archives
        self.schedules = adapter.schedules  # cron schedules (coordination, not the log)
        self.limits = adapter.limits  # the limits in force (coordination, not the log)
        self._in_transaction_until: dict[tuple[WorkflowKey, ...], float] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        await self.adapter.open(migrate=migrate)

    async def close(self) -> None:
        await self.adapter.close()

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        return await self.adapter.migrate(dry_run=dry_run)

    async def schema_version(self) -> int:
        return await self.adapter.schema_version()

    def wake_channel(self) -> WakeChannel:
        return self.adapter.wake_channel()

    def rebuilder(self) -> Rebuilder:
        return self.adapter.rebuilder()

    # -- writes (the rules) ----------------------------------------------------------------

    async def append(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        """Append each request; each gets its own outcome (see ``rules.append``)."""
        return await rules.append(self.adapter, requests)

    async def claim(
        self, worker_id: str, workflows: Sequence[WorkflowKey], limit: int, lease_seconds: float
    ) -> list[WorkflowRun]:
        return (await self.claim_ready(worker_id, workflows, limit, lease_seconds)).runs

    async def claim_ready(
        self,
        worker_id: str,
        workflows: Sequence[WorkflowKey],
        limit: int,
        lease_seconds: float,
        offered: str | None = None,
    ) -> Claimed:
        """Claim up to ``limit`` ready runs: in one statement where the adapter can and no
        served workflow has stored limits, else by the rules in a transaction. ``offered``: the
        run a wake-up named, claimed by its id where it is the one to take first (a lighter
        statement); else, or when it took nothing and more is ready, as usual."""
        if limit <= 0 or not workflows:
            return Claimed(runs=[])
        served = tuple(sorted(workflows, key=lambda w: (w[0], w[1] or "")))
        single = self.adapter.single
        if single is not None and self._in_transaction_until.get(served, 0.0) <= monotonic():
            if offered is not None:
                by_id = await single.claim_offered(worker_id, workflows, offered, lease_seconds)
                # It took its run, or nothing else is ready: else claim the usual way, now.
                if by_id is not None and not by_id.overdue and (by_id.runs or not by_id.others):
                    return by_id
            claimed = await single.claim(worker_id, workflows, limit, lease_seconds)
            if claimed is not None:
                if claimed.overdue:
                    await self.fail_overdue(worker_id, workflows)
                return claimed
            # Limits stored (or a reproject swapping): the rules decide for a while.
            self._in_transaction_until[served] = monotonic() + _TRANSACTION_CLAIMS_SECONDS
        return await self.adapter.transaction(
            "claiming runs",
            lambda tx: claim_rules.claim(tx, worker_id, workflows, limit, lease_seconds),
        )

    async def fail_overdue(
        self, worker_id: str, workflows: Sequence[WorkflowKey], limit: int = 100
    ) -> int:
        return await self.adapter.transaction(
            "failing runs past their deadline",
            lambda tx: claim_rules.fail_overdue(tx, worker_id, workflows, limit),
        )

    async def cancel(self, run_id: str, *, cascade: bool) -> None:
        await self.adapter.transaction(
            "canceling a run", lambda tx: rules.cancel(tx, run_id, cascade=cascade)
        )

    async def resume(self, run_id: str) -> WorkflowRun:
        return await self.adapter.transaction("resuming a run", lambda tx: rules.resume(tx, run_id))

    async def send_signal(self, signal_name: str, data: Any, key: str | None) -> list[str]:
        return await self.adapter.transaction(
            "sending a signal", lambda tx: rules.send_signal(tx, signal_name, data, key)
        )

    async def fire_schedules(self, names: Sequence[str], now: datetime | None = None) -> Fired:
        """Fire the due ticks of these schedules in one transaction (see
        ``schedule_rules.decide``); ``now``: the due time (default: the database's clock)."""
        if not names:
            return Fired()
        return await self.adapter.schedules.fire(
            sorted(names),
            lambda tx, rows: schedule_rules.decide(tx, rows, now),
            now,
        )

    async def heartbeat(self, claims: dict[str, str], lease_seconds: float) -> set[str]:
        """Extend the leases of ``{run_id: claim_token}``; returns the run ids still held."""
        return await self.adapter.heartbeat(claims, lease_seconds)

    # -- reads -----------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        return await self.adapter.get_run(run_id)

    async def list_runs(
        self, *, status: str | None, workflow_name: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        return await self.adapter.list_runs(
            status=status, workflow_name=workflow_name, limit=limit, cursor=cursor
        )

    async def list_children(self, run_id: str) -> list[WorkflowRun]:
        return await self.adapter.list_children(run_id)

    async def step_attempts(self, run_id: str) -> list[StepAttempt]:
        return await self.adapter.step_attempts(run_id)

    async def read_run_events(self, run_id: str, after: int = 0) -> list[Event]:
        return await self.adapter.read_run_events(run_id, after)

    async def read_log(self, after: str | None, limit: int, *, barrier: bool = True) -> LogBatch:
        return await self.adapter.read_log(after, limit, barrier=barrier)

    async def log_lag(self) -> float:
        return await self.adapter.log_lag()

    async def count_runs(self) -> dict[tuple[str, str], int]:
        return await self.adapter.count_runs()

    async def next_wake_at(self, workflows: Sequence[WorkflowKey]) -> datetime | None:
        return await self.adapter.next_wake_at(workflows)

    # -- monitoring (dashboard, metrics) ---------------------------------------------------

    async def held_back(self, run: WorkflowRun) -> str | None:
        """Why a ready run waits although it is due: the limit that holds it back, or None."""
        due = run.available_at is not None and run.available_at <= utcnow()
        if run.is_terminal or run.claim_token is not None or not due:
            return None
        stored = await self.limits.get(run.workflow_name)
        if stored is None:
            return None
        keys = [(run.workflow_name, run.key)] if run.key is not None else []
        usage = await self.limits.usage([run.workflow_name], keys)
        return flow.held_back(run, stored.limits, usage)

    async def limited_runs(self) -> dict[str, int]:
        """Ready runs that a limit holds back, per workflow with stored limits."""
        stored = {s.workflow_name: s.limits for s in await self.limits.stored()}
        groups = await self.limits.ready_groups()
        keys = sorted({(g.workflow_name, g.key) for g in groups if g.key is not None})
        usage = await self.limits.usage(sorted(stored), keys)
        counts = dict.fromkeys(stored, 0)
        for g in groups:
            limits = stored.get(g.workflow_name)
            if limits and flow.reason(limits, usage, g.workflow_name, g.key, fresh=g.fresh):
                counts[g.workflow_name] += g.count
        return counts

    async def ready_backlog(self) -> Backlog:
        return await self.adapter.ready_backlog()

    async def count_unowned(self) -> int:
        return await self.adapter.count_unowned()

    async def runs_per_minute(self, minutes: int) -> list[MinuteCount]:
        return await self.adapter.runs_per_minute(minutes)

    async def runs_by_key(self, idempotency_key: str) -> list[WorkflowRun]:
        return await self.adapter.runs_by_key(idempotency_key)

    async def log_tail(self) -> str | None:
        return await self.adapter.log_tail()

    async def events_at(self, keys: Sequence[tuple[str, int]]) -> list[Event]:
        return await self.adapter.events_at(keys)

    def pool_stats(self) -> PoolStats | None:
        return self.adapter.pool_stats()
