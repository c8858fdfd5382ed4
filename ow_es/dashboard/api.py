"""The JSON API (see API.md, "Dashboard HTTP API"): one client call per route."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ow_es import run_facts
from ow_es.client import OpenWorkflow
from ow_es.dashboard.cache import CountsCache
from ow_es.dashboard.jsonio import ApiError, json_body, json_response, optional_str, required_str
from ow_es.durations import to_datetime, utcnow
from ow_es.errors import RunNotFound
from ow_es.models import RUN_STATUSES, WorkflowRun


def client_of(request: Request) -> OpenWorkflow:
    client: OpenWorkflow = request.app.state.client
    return client


async def counts_of(request: Request) -> dict[tuple[str, str], int]:
    """Runs by (workflow, status), shared for a moment by every caller (see ``cache``)."""
    cache: CountsCache = request.app.state.counts
    return await cache.get(client_of(request))


def changed(request: Request) -> None:
    cache: CountsCache = request.app.state.counts
    cache.invalidate()


async def _run(client: OpenWorkflow, run_id: str) -> WorkflowRun:
    run: WorkflowRun | None = await client.store.get_run(run_id)
    if run is None:
        raise RunNotFound(f"run {run_id} not found")
    return run


def _int_param(request: Request, name: str, default: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ApiError(422, f"{name} is required (an integer)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be an integer, got {raw!r}") from None


async def list_runs(request: Request) -> Response:
    """``?status=&workflow=&limit=&cursor=`` or ``?q=`` (an exact run id or idempotency key);
    ``held_back``: why each listed run that a limit keeps waiting waits, by run id."""
    client = client_of(request)
    params = request.query_params
    status = params.get("status") or None
    workflow = params.get("workflow") or None
    limit = _int_param(request, "limit", 50)
    if status is not None and status not in RUN_STATUSES:
        raise ApiError(422, f"unknown status {status!r}: use one of {', '.join(RUN_STATUSES)}")
    query = (params.get("q") or "").strip()
    if query:
        run = await client.store.get_run(query)
        found = [run] if run is not None else await client.store.runs_by_key(query)
        runs = [
            r
            for r in found
            if (status is None or r.status == status)
            and (workflow is None or r.workflow_name == workflow)
        ]
        held = await run_facts.held_back(client.store, runs)
        return json_response({"runs": runs, "next_cursor": None, "held_back": held})
    page = await client.list_runs(
        status=status, workflow_name=workflow, limit=limit, cursor=params.get("cursor") or None
    )
    held = await run_facts.held_back(client.store, page.runs)
    return json_response({"runs": page.runs, "next_cursor": page.next_cursor, "held_back": held})


async def get_run(request: Request) -> Response:
    """The run, its step attempts, its children's ids and its parent's, the schedule it came
    from (a name, or null) and ``held_back``: why a ready run waits when a limit keeps it
    from being claimed (null otherwise)."""
    client = client_of(request)
    run = await _run(client, request.path_params["run_id"])
    steps = await client.store.step_attempts(run.id)
    children = await client.store.list_children(run.id)
    return json_response(
        {
            "run": run,
            "steps": steps,
            "children": [child.id for child in children],
            "parent": run.parent_run_id,
            "schedule": run_facts.schedule_of(run),
            "held_back": await client.store.held_back(run),
            "now": utcnow(),
        }
    )


async def run_events(request: Request) -> Response:
    events = await client_of(request).history(request.path_params["run_id"])
    return json_response({"events": events})


async def run_state(request: Request) -> Response:
    """The run and its steps as of its event ``seq`` (what ``state_at`` returns)."""
    seq = _int_param(request, "seq")
    state = await client_of(request).state_at(request.path_params["run_id"], seq)
    return json_response({"run": state.run, "steps": state.steps})


async def counts(request: Request) -> Response:
    """Runs per status and per workflow and status; every status present, 0 included."""
    by_pair = await counts_of(request)
    by_status: dict[str, int] = dict.fromkeys(RUN_STATUSES, 0)
    by_workflow: dict[str, dict[str, int]] = {}
    for (name, status), n in sorted(by_pair.items()):
        by_status[status] = by_status.get(status, 0) + n
        by_workflow.setdefault(name, dict.fromkeys(RUN_STATUSES, 0))[status] = n
    return json_response({"by_status": by_status, "by_workflow": by_workflow})


CHART_MINUTES = 60


async def stats(request: Request) -> Response:
    """The overview's figures: backlog, unowned runs, runs per minute over the last hour
    (``started``: created; ``finished``: reached any terminal status; ``failed``)."""
    store = client_of(request).store
    backlog = await store.ready_backlog()
    unowned = await store.count_unowned()
    rows = await store.runs_per_minute(CHART_MINUTES)
    now = utcnow().replace(second=0, microsecond=0)
    minutes = [now - timedelta(minutes=CHART_MINUTES - 1 - i) for i in range(CHART_MINUTES)]
    index = {minute: i for i, minute in enumerate(minutes)}
    series = {name: [0] * CHART_MINUTES for name in ("started", "finished", "failed")}
    for row in rows:
        i = index.get(row.minute)
        if i is None:
            continue
        if row.series == "started":
            series["started"][i] += row.count
        else:
            series["finished"][i] += row.count
            if row.series == "failed":
                series["failed"][i] += row.count
    return json_response(
        {
            "ready_runs": backlog.ready,
            "oldest_ready_age_seconds": backlog.oldest_age_seconds,
            "unowned_runs": unowned,
            "per_minute": {"minutes": minutes, **series},
            "now": utcnow(),
        }
    )


def _time(body: dict[str, Any], key: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ApiError(422, f"{key} must be an ISO-8601 time or a duration like '5m'")
    try:
        return to_datetime(value, key)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


async def start_run(request: Request) -> Response:
    """``{"workflow_name", "version"?, "input", "idempotency_key"?, "available_at"?,
    "deadline_at"?, "key"?, "priority"?}`` -> ``{"run": {...}}``."""
    body = await json_body(request)
    client = client_of(request)
    handle = await client.start(
        required_str(body, "workflow_name"),
        body.get("input"),
        version=optional_str(body, "version") or None,
        idempotency_key=optional_str(body, "idempotency_key"),
        available_at=_time(body, "available_at"),
        deadline_at=_time(body, "deadline_at"),
        key=optional_str(body, "key"),
        priority=body.get("priority", 0),  # checked by start(): an integer
    )
    changed(request)
    return json_response({"run": await _run(client, handle.run_id)})


async def cancel_run(request: Request) -> Response:
    body = await json_body(request)
    cascade = body.get("cascade", True)
    if not isinstance(cascade, bool):
        raise ApiError(422, "cascade must be true or false")
    client = client_of(request)
    run_id = request.path_params["run_id"]
    await client.cancel(run_id, cascade=cascade)
    changed(request)
    return json_response({"run": await _run(client, run_id)})


async def resume_run(request: Request) -> Response:
    await json_body(request)  # an empty body or an object; anything else is refused
    client = client_of(request)
    run_id = request.path_params["run_id"]
    await client.resume(run_id)
    changed(request)
    return json_response({"run": await _run(client, run_id)})


async def send_signal(request: Request) -> Response:
    """``{"name", "data", "idempotency_key"?}`` -> ``{"delivered_to": [run ids]}``."""
    body = await json_body(request)
    delivered = await client_of(request).send_signal(
        required_str(body, "name"),
        body.get("data"),
        idempotency_key=optional_str(body, "idempotency_key"),
    )
    return json_response({"delivered_to": delivered})


ROUTES = [
    Route("/api/runs", list_runs, methods=["GET"]),
    Route("/api/runs", start_run, methods=["POST"]),
    Route("/api/runs/{run_id}", get_run, methods=["GET"]),
    Route("/api/runs/{run_id}/events", run_events, methods=["GET"]),
    Route("/api/runs/{run_id}/state", run_state, methods=["GET"]),
    Route("/api/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/api/runs/{run_id}/resume", resume_run, methods=["POST"]),
    Route("/api/counts", counts, methods=["GET"]),
    Route("/api/stats", stats, methods=["GET"]),
    Route("/api/signals", send_signal, methods=["POST"]),
]
