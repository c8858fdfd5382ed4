"""``GET /api/workers``: the live workers and the runs they leave stranded.

Three answers from the worker registry (``ow.store.registry``): who is live and what each
serves, with its busy slots and last heartbeat; ready runs of a workflow and version that no
live worker serves (nothing will ever claim them); and runs held by a worker with no event for
longer than the stuck threshold (a hung body looks exactly like a long step, so they are
shown, not judged). The threshold is ``OW_ES_STUCK_AFTER`` (seconds or a duration like
``"10m"``, default 600 s), read once when the app is made; ``?stuck_after=`` overrides it for
one request. ``/metrics`` counts the same runs with the same threshold.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ow_es.dashboard.api import client_of
from ow_es.dashboard.jsonio import ApiError, json_response
from ow_es.dashboard.metrics import STUCK_AFTER_SECONDS
from ow_es.durations import to_seconds, utcnow
from ow_es.errors import ConfigError
from ow_es.models import WorkerInfo, WorkflowRun

STUCK_AFTER_ENV = "OW_ES_STUCK_AFTER"
STUCK_LIMIT = 100  # stuck runs listed; ``stuck_more`` says when there are more


def parse_seconds(raw: str, what: str) -> float:
    """``"90"``, ``"1.5"`` (seconds) or a duration like ``"10m"``; ``ValueError`` otherwise
    (negative, not finite, not a number)."""
    text = raw.strip()
    try:
        number = float(text)
    except ValueError:
        return to_seconds(text, what)
    return to_seconds(number, what)


def stuck_after_setting(environ: Mapping[str, str] = os.environ) -> float:
    """The stuck threshold in seconds, from ``OW_ES_STUCK_AFTER`` (600 s when unset)."""
    raw = environ.get(STUCK_AFTER_ENV, "").strip()
    if not raw:
        return STUCK_AFTER_SECONDS
    try:
        return parse_seconds(raw, STUCK_AFTER_ENV)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def stuck_after_of(request: Request) -> float:
    """The app's threshold, or this request's ``?stuck_after=`` (422 when it is nonsense)."""
    raw = request.query_params.get("stuck_after")
    if raw is None or not raw.strip():
        seconds: float = getattr(request.app.state, "stuck_after", STUCK_AFTER_SECONDS)
        return seconds
    try:
        return parse_seconds(raw, "stuck_after")
    except ValueError as exc:
        raise ApiError(422, f"{exc} (seconds, or a duration like '10m')") from None


def _age(now: datetime, then: datetime) -> float:
    return max(0.0, (now - then).total_seconds())


def _worker(worker: WorkerInfo, now: datetime) -> dict[str, Any]:
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "workflows": [{"name": name, "version": version} for name, version in worker.workflows],
        "concurrency": worker.concurrency,
        "busy": worker.busy,
        "idle": max(0, worker.concurrency - worker.busy),
        "started_at": worker.started_at,
        "heartbeat_at": worker.heartbeat_at,
        "heartbeat_age_seconds": _age(now, worker.heartbeat_at),
    }


def _stuck(run: WorkflowRun, now: datetime) -> dict[str, Any]:
    return {
        "id": run.id,
        "workflow_name": run.workflow_name,
        "version": run.version,
        "status": run.status,
        "worker_id": run.worker_id,
        "attempts": run.attempts,
        "lease_until": run.lease_until,
        "updated_at": run.updated_at,  # the time of its last event
        "idle_seconds": _age(now, run.updated_at),
    }


async def workers(request: Request) -> Response:
    """``{"workers", "unserved", "stuck", "stuck_more", "stuck_after_seconds", "now"}``."""
    stuck_after = stuck_after_of(request)
    registry = client_of(request).store.registry
    live = await registry.live()
    unserved = await registry.unserved_runs()
    stuck = await registry.stuck_runs(stuck_after, STUCK_LIMIT + 1)
    now = utcnow()
    return json_response(
        {
            "workers": [_worker(w, now) for w in sorted(live, key=lambda w: (w.host, w.id))],
            "unserved": [
                {"workflow_name": name, "version": version, "ready": n}
                for (name, version), n in sorted(
                    unserved.items(), key=lambda item: (item[0][0], item[0][1] or "")
                )
            ],
            "stuck": [_stuck(run, now) for run in stuck[:STUCK_LIMIT]],
            "stuck_more": len(stuck) > STUCK_LIMIT,
            "stuck_after_seconds": stuck_after,
            "now": now,
        }
    )


ROUTES = [Route("/api/workers", workers, methods=["GET"])]
