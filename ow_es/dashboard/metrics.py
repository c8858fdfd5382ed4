"""``GET /metrics``: gauges derived from the database, computed at each scrape.

``collect()`` of a prometheus-client collector is synchronous, so the handler runs the (async,
indexed) queries first and renders a fresh registry holding a collector over their results.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ow_es.client import OpenWorkflow
from ow_es.dashboard.api import client_of
from ow_es.dashboard.cache import CountsCache
from ow_es.models import RUN_STATUSES

STUCK_AFTER_SECONDS = 600.0  # a held run with no event for this long counts as stuck


class Snapshot(msgspec.Struct, kw_only=True):
    """What one scrape reports, read from the database."""

    runs: dict[tuple[str, str], int]
    ready: int
    oldest_ready_age: float
    unowned: int
    log_lag: float
    workers: int
    unserved: dict[tuple[str, str | None], int]
    limited: dict[str, int]
    stuck: int


async def take_snapshot(
    client: OpenWorkflow, counts: CountsCache, stuck_after: float = STUCK_AFTER_SECONDS
) -> Snapshot:
    store = client.store
    backlog = await store.ready_backlog()
    return Snapshot(
        runs=await counts.get(client),
        ready=backlog.ready,
        oldest_ready_age=backlog.oldest_age_seconds,
        unowned=await store.count_unowned(),
        log_lag=await store.log_lag(),
        workers=len(await store.registry.live()),
        unserved=await store.registry.unserved_runs(),
        limited=await store.limited_runs(),
        stuck=len(await store.registry.stuck_runs(stuck_after)),
    )


class DatabaseCollector(Collector):
    """The gauges of one snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.snapshot
        runs = GaugeMetricFamily(
            "openworkflow_workflow_runs",
            "Workflow runs by status and workflow (every status of a workflow seen, 0 included).",
            labels=["status", "workflow_name"],
        )
        for name in sorted({name for name, _ in s.runs}):
            for status in RUN_STATUSES:
                runs.add_metric([status, name], s.runs.get((name, status), 0))
        yield runs
        yield GaugeMetricFamily(
            "ow_es_ready_runs", "Runs due now and not held by a worker (the backlog).", s.ready
        )
        yield GaugeMetricFamily(
            "ow_es_oldest_ready_run_age_seconds",
            "How long the oldest ready run has been due (0 without a backlog).",
            s.oldest_ready_age,
        )
        yield GaugeMetricFamily(
            "ow_es_unowned_runs",
            "Non-terminal runs with neither a live lease nor a timer, waiting for no signal or"
            " child: nothing will pick them up (should be 0).",
            s.unowned,
        )
        yield GaugeMetricFamily("ow_es_workers", "Live workers (by their heartbeats).", s.workers)
        unserved = GaugeMetricFamily(
            "ow_es_unserved_runs",
            "Ready runs that no live worker serves (by workflow name and version).",
            labels=["workflow_name", "version"],
        )
        for (name, version), n in sorted(
            s.unserved.items(), key=lambda i: (i[0][0], i[0][1] or "")
        ):
            unserved.add_metric([name, version or ""], n)
        yield unserved
        limited = GaugeMetricFamily(
            "ow_es_limited_runs",
            "Ready runs that a concurrency or rate limit holds back (by workflow name; every"
            " workflow with stored limits, 0 included).",
            labels=["workflow_name"],
        )
        for name, n in sorted(s.limited.items()):
            limited.add_metric([name], n)
        yield limited
        yield GaugeMetricFamily(
            "ow_es_stuck_runs",
            "Runs held by a worker with no event for longer than the stuck threshold"
            f" (OW_ES_STUCK_AFTER, default {STUCK_AFTER_SECONDS:g} s).",
            s.stuck,
        )
        yield GaugeMetricFamily(
            "ow_es_log_lag_seconds",
            "How long the oldest open transaction may hold back log readers (the live stream).",
            s.log_lag,
        )


def render(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(snapshot))
    return generate_latest(registry)


async def metrics(request: Request) -> Response:
    stuck_after = getattr(request.app.state, "stuck_after", STUCK_AFTER_SECONDS)
    snapshot = await take_snapshot(client_of(request), request.app.state.counts, stuck_after)
    return Response(render(snapshot), media_type=CONTENT_TYPE_LATEST)
