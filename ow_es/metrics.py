"""A worker's Prometheus metrics, in a registry of its own, served on ``metrics_port``.

The worker calls four hooks, each one line at its call site: ``start`` (when it starts
serving), ``claimed`` (the runs a claim returned), ``committed`` (each group commit's requests
and outcomes) and ``stop``. Everything else is derived here:

- ``ow_es_runs_started_total{workflow_name}``: runs this worker claimed for the first time.
- ``ow_es_runs_finished_total{workflow_name,status}``: runs it ended (completed, failed).
- ``ow_es_step_duration_seconds{workflow_name,step_kind}``: step attempts it ended.
- ``ow_es_step_failures_total{workflow_name}``: step attempts that failed.
- ``ow_es_run_start_latency_seconds``: from the moment a run was due (its ``available_at``:
  the requested start, the end of a sleep or backoff, a wake-up) to its claim. Read, off the
  claim path, from the event before each claim (one query per claim batch). Takeovers of an
  expired lease are not observed.
- ``ow_es_worker_slots{state}`` (busy, idle), ``ow_es_events_appended_total{type}``,
  ``ow_es_db_pool_connections{state}`` (in_use, idle; absent where there is no pool: SQLite).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ow_es import events as ev
from ow_es.errors import OwEsError
from ow_es.models import Event, WorkflowRun
from ow_es.store.port import Appended, AppendRequest, Outcome

if TYPE_CHECKING:
    from ow_es.runtime.worker import Worker
    from ow_es.store.store import Store

log = logging.getLogger("ow_es.metrics")

STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# The event before a claim made the run due: at a time it names, or when it was appended.
_DUE_AT_KEY = {"run_created": "available_at", "run_sleeping": "until", "retry_scheduled": "until"}
_DUE_WHEN_APPENDED = frozenset(
    {"run_woken", "signal_received", "child_finished", "run_released", "run_resumed"}
)


def due_at(before_claim: Event) -> datetime | None:
    """When the run became due, from the event just before its claim (None: not known)."""
    kind = before_claim.type
    if kind in _DUE_WHEN_APPENDED:
        return before_claim.created_at
    key = _DUE_AT_KEY.get(kind) or ("until" if kind == "run_waiting" else None)
    value = before_claim.data.get(key) if key else None
    if not isinstance(value, str):
        return None  # a wait without a timeout is ended by an event, never by the clock
    return max(datetime.fromisoformat(value), before_claim.created_at)


def _shut_down(server: Any) -> None:
    """Off the event loop: ``shutdown`` waits for the serving thread's next poll."""
    server.shutdown()
    server.server_close()


class _Live(Collector):
    """Read when scraped: the worker's slots, its held runs and the store's pool."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        worker = self.metrics.worker
        slots = GaugeMetricFamily(
            "ow_es_worker_slots", "Execution slots of this worker.", labels=["state"]
        )
        busy = worker.busy_slots if worker is not None else 0
        total = worker.concurrency if worker is not None else 0
        slots.add_metric(["busy"], busy)
        slots.add_metric(["idle"], max(total - busy, 0))
        yield slots
        held = worker.held if worker is not None else None
        if held is not None:  # only where holding is on (hold_parked_runs)
            now = GaugeMetricFamily(
                "ow_es_worker_held_runs",
                "Runs parked on a wait whose workflow function this worker holds.",
            )
            now.add_metric([], len(held))
            yield now
            resumed = CounterMetricFamily(
                "ow_es_worker_held_resumes", "Claims that went on with a held workflow function."
            )
            resumed.add_metric([], held.resumed)
            yield resumed
        stats = worker.client.store.pool_stats() if worker is not None else None
        if stats is not None:
            pool = GaugeMetricFamily(
                "ow_es_db_pool_connections",
                "Database connections of this worker's pool.",
                labels=["state"],
            )
            pool.add_metric(["in_use"], stats.in_use)
            pool.add_metric(["idle"], stats.idle)
            yield pool


class WorkerMetrics:
    """One worker's metrics; ``port`` serves them over HTTP (``/metrics``) while it runs."""

    def __init__(self, *, port: int | None = None, host: str = "0.0.0.0") -> None:
        self.port = port
        self.host = host
        self.registry = CollectorRegistry()
        self.worker: Worker | None = None
        self._server: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        r = self.registry
        self.runs_started = Counter(
            "ow_es_runs_started",
            "Runs this worker claimed for the first time.",
            ["workflow_name"],
            registry=r,
        )
        self.runs_finished = Counter(
            "ow_es_runs_finished",
            "Runs this worker ended, by final status.",
            ["workflow_name", "status"],
            registry=r,
        )
        self.step_duration = Histogram(
            "ow_es_step_duration_seconds",
            "Duration of the step attempts this worker ended.",
            ["workflow_name", "step_kind"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.step_failures = Counter(
            "ow_es_step_failures", "Failed step attempts.", ["workflow_name"], registry=r
        )
        self.run_start_latency = Histogram(
            "ow_es_run_start_latency_seconds",
            "From a run being due (available_at) to its claim by this worker.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events_appended = Counter(
            "ow_es_events_appended", "Events this worker appended.", ["type"], registry=r
        )
        self.schedule_ticks = Counter(
            "ow_es_schedule_ticks",
            "Schedule ticks this worker fired: a run started, or skipped (overlap).",
            ["schedule", "outcome"],
            registry=r,
        )
        r.register(_Live(self))

    # -- hooks -------------------------------------------------------------------------------

    def start(self, worker: Worker) -> None:
        """The worker starts serving: follow it, and listen on ``port`` if one was given."""
        self.worker = worker
        if self.port is not None and self._server is None:
            self._server, _thread = start_http_server(self.port, self.host, self.registry)
            log.info("worker metrics on http://%s:%s/metrics", self.host, self.bound_port)

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            threading.Thread(target=_shut_down, args=(server,), daemon=True).start()

    @property
    def bound_port(self) -> int | None:
        """The port serving the metrics (the one chosen for ``port=0``)."""
        return int(self._server.server_address[1]) if self._server is not None else None

    def claimed(self, runs: Sequence[WorkflowRun], store: Store) -> None:
        """After a claim: count first claims, and measure start latencies in the background."""
        for run in runs:
            self.events_appended.labels("run_claimed").inc()
            if run.started_at is not None and run.started_at == run.updated_at:
                self.runs_started.labels(run.workflow_name).inc()
        if runs:
            task = asyncio.create_task(self._observe_latency(list(runs), store))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def fired(self, started: Sequence[str], skipped: Sequence[str]) -> None:
        """After firing schedules: the schedule names of the runs started and ticks skipped."""
        for name in started:
            self.schedule_ticks.labels(name, "started").inc()
        for name in skipped:
            self.schedule_ticks.labels(name, "skipped").inc()

    def committed(self, requests: Sequence[AppendRequest], outcomes: Sequence[Outcome]) -> None:
        """After a group commit: what its accepted requests appended."""
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, Appended):
                self._appended(request, outcome)

    # -- derivations ----------------------------------------------------------------------

    def _appended(self, request: AppendRequest, outcome: Appended) -> None:
        name = outcome.run.workflow_name
        at = outcome.run.updated_at
        events: list[ev.EventData] = list(request.events)
        if request.child is not None:
            events += request.child.events
        if request.signal is not None:
            self.events_appended.labels("signal_sent").inc()
        for data in events:
            self.events_appended.labels(data.TYPE).inc()
            if isinstance(data, ev.StepCompleted | ev.StepFailed):
                seconds = max((at - data.started_at).total_seconds(), 0.0)
                self.step_duration.labels(name, data.kind).observe(seconds)
            if isinstance(data, ev.StepFailed):
                self.step_failures.labels(name).inc()
            elif isinstance(data, ev.RunCompleted):
                self.runs_finished.labels(name, "completed").inc()
            elif isinstance(data, ev.RunFailed):
                self.runs_finished.labels(name, "failed").inc()

    async def _observe_latency(self, runs: list[WorkflowRun], store: Store) -> None:
        try:
            before = await store.events_at([(run.id, run.seq - 1) for run in runs])
        except OwEsError as exc:
            log.debug("start latency not measured: %s", exc)
            return
        by_run = {event.run_id: event for event in before}
        for run in runs:
            event = by_run.get(run.id)
            due = due_at(event) if event is not None else None
            if due is not None:
                latency = (run.updated_at - due).total_seconds()
                self.run_start_latency.observe(max(latency, 0.0))
