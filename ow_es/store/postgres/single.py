"""Common appends on PostgreSQL in one autocommit statement.

Two appends are by far the most frequent, and neither needs to read anything first:

* a new run (``start()``): the row and its first event are folded from the request alone;
* the claim owner's step start, end or failure, or the run's end: the worker knows the run's
  row, the one its own last append returned.

Each is then one statement: insert the run row (if its id and idempotency key are free), or
update it on the condition that it is still at that ``seq`` under that claim; insert the events
and step rows only if that happened; notify. One round trip and one commit, against two round
trips in a pipelined transaction on the general path. When the statement writes nothing (a
taken key, a run that changed, a lost claim), the caller takes the general path, which decides
with the locked rows and reports the outcome.

Times: the plan is folded with a marker time; every value that *is* the marker is written as
the statement's ``now()``, so events and rows carry the transaction's time as on the general
path, and the returned row is patched with it.

Locks: the statement holds its table locks before it could ask for the append gate, the
reverse of the general path's order, so it only *tries* the gate: while a reproject holds it or
waits for it, nothing is written and the general path waits for the gate instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.models import RUN_COLUMNS, STEP_COLUMNS, WorkflowRun
from ow_es.store import codec
from ow_es.store.planner import Plan, is_create, plan_create, plan_updates
from ow_es.store.port import Appended, AppendRequest

# Events whose fold needs no clock comparison and no other run (a run with a parent tells it
# of its end: the general path does that).
_OWNER_EVENTS = (ev.StepStarted, ev.StepCompleted, ev.StepFailed, ev.RunCompleted, ev.RunFailed)

_NOW = object()  # a parameter written as now()

_TIME_FIELDS = tuple(f for f in RUN_COLUMNS if f.endswith(("_at", "_until")))
_EVENT_CASTS = ("text", "text", "integer", "text", "smallint", "jsonb", "timestamptz")
_STEP_CASTS = tuple(
    "integer"
    if c == "attempt"
    else "jsonb"
    if c in ("input", "output", "error")
    else "timestamptz"
    if c.endswith("_at")
    else "text"
    for c in STEP_COLUMNS
)
_RUN_CASTS = tuple(
    "integer"
    if c in ("attempts", "seq")
    else "jsonb"
    if c in codec.JSON_RUN_COLUMNS
    else "timestamptz"
    if c in _TIME_FIELDS
    else "text"
    for c in RUN_COLUMNS
)
_STEP_KEY = ("namespace_id", "run_id", "step_name", "attempt")
_MAX_EVENTS = 4  # each count of rows is its own statement text: keep their number small


@dataclass(frozen=True)
class Single:
    """An append planned without reading: ``old`` is None for a new run."""

    plan: Plan
    marker: datetime
    old: WorkflowRun | None
    new: WorkflowRun


def prepare(namespace: str, request: AppendRequest) -> Single | None:
    """The plan of ``request`` if it can be written in one statement."""
    if not request.events or len(request.events) > _MAX_EVENTS:
        return None
    marker = utcnow()
    if is_create(request):
        if request.claim_token is not None or len(request.events) != 1:
            return None
        plan, new = plan_create(namespace, marker, request)
        return Single(plan=plan, marker=marker, old=None, new=new)
    known = request.known
    if (
        known is None
        or request.claim_token is None
        or known.claim_token != request.claim_token
        or known.status != "running"
        or known.parent_run_id is not None
        or (request.expected_seq is not None and request.expected_seq != known.seq)
        or not all(isinstance(e, _OWNER_EVENTS) for e in request.events)
    ):
        return None
    plan = plan_updates(namespace, marker, [(0, request)], {known.id: known})
    if plan.follow_ups or plan.ready or not isinstance(plan.outcomes.get(0), Appended):
        return None
    ((old, new),) = plan.updated_runs
    return Single(plan=plan, marker=marker, old=old, new=new)


def statement(
    single: Single, gate_key: int, channels: tuple[str, str], token: str | None
) -> tuple[str, list[Any]]:
    """The statement and its parameters; its one row is (run rows written, now())."""

    def mark(value: Any) -> Any:
        return _NOW if value is single.marker else value

    def now_flags(row: tuple[Any, ...] | list[Any]) -> tuple[bool, ...]:
        return tuple(v is _NOW for v in row)

    def present(row: tuple[Any, ...] | list[Any]) -> list[Any]:
        return [v for v in row if v is not _NOW]

    params: list[Any] = [gate_key]
    if single.old is None:
        values = codec.run_values(single.new, time=mark)
        run_shape: tuple[Any, ...] = ("insert", now_flags(values))
        params += present(values)
    else:
        changes = codec.run_changes([(single.old, single.new)], time=mark)
        ((columns, (row,)),) = changes.items()
        *changed, namespace, run_id = row
        run_shape = ("update", tuple(zip(columns, now_flags(changed), strict=True)))
        params += [*present(changed), namespace, run_id, single.old.seq, token]
    events = [codec.event_values(e, time=mark) for e in single.plan.events]
    steps = [codec.step_values(s, time=mark) for s in single.plan.steps]
    for values in (*events, *steps):
        params += present(values)
    ready_channel, done_channel = channels
    notes: list[tuple[str, str]] = []
    if single.plan.ready:
        notes.append((ready_channel, ""))
    notes += [(done_channel, run_id) for run_id in single.plan.done]
    for note in notes:
        params += note
    shape = (
        run_shape,
        tuple(now_flags(e) for e in events),
        tuple(now_flags(s) for s in steps),
        len(notes),
    )
    return _sql(shape), params


def outcome(single: Single, now: datetime) -> Appended:
    """The append's outcome, with the marker replaced by the transaction's time."""
    changes = {f: now for f in _TIME_FIELDS if getattr(single.new, f) is single.marker}
    run = msgspec.structs.replace(single.new, **changes) if changes else single.new
    if single.old is None:
        return Appended(run=run, created=True, first_seq=1)
    return Appended(run=run, first_seq=single.old.seq + 1)


@functools.cache
def _sql(shape: tuple[Any, ...]) -> str:
    (kind, run_flags), event_rows, step_rows, notes = shape
    parts = ["WITH gate AS (SELECT pg_try_advisory_xact_lock_shared(%s) AS held)"]
    if kind == "insert":
        parts.append(
            f"run AS (INSERT INTO workflow_runs ({', '.join(RUN_COLUMNS)}) "
            + _select(run_flags, _RUN_CASTS, "(SELECT held FROM gate)")
            + " ON CONFLICT DO NOTHING RETURNING id)"
        )
    else:
        assignments = ", ".join(
            f"{c} = now()" if is_now else f"{c} = %s::{_RUN_CASTS[RUN_COLUMNS.index(c)]}"
            for c, is_now in run_flags
        )
        parts.append(
            f"run AS (UPDATE workflow_runs SET {assignments}"
            " WHERE namespace_id = %s AND id = %s AND seq = %s AND claim_token = %s"
            " AND status = 'running' AND (SELECT held FROM gate) RETURNING id)"
        )
    written = "EXISTS (SELECT FROM run)"
    parts.append(
        "event AS (INSERT INTO events"
        " (namespace_id, run_id, seq, type, schema_version, data, created_at) "
        + " UNION ALL ".join(_select(row, _EVENT_CASTS, written) for row in event_rows)
        + ")"
    )
    if step_rows:
        updates = ", ".join(f"{c} = excluded.{c}" for c in STEP_COLUMNS if c not in _STEP_KEY)
        parts.append(
            f"step AS (INSERT INTO step_attempts ({', '.join(STEP_COLUMNS)}) "
            + " UNION ALL ".join(_select(row, _STEP_CASTS, written) for row in step_rows)
            + f" ON CONFLICT ({', '.join(_STEP_KEY)}) DO UPDATE SET {updates})"
        )
    final = "SELECT (SELECT count(*) FROM run), now()"
    if notes:
        notify = " UNION ALL ".join(["SELECT pg_notify(%s, %s) FROM run"] * notes)
        parts.append(f"note AS ({notify})")
        final += ", (SELECT count(*) FROM note)"
    return ",\n".join(parts) + "\n" + final


def _select(flags: tuple[bool, ...], casts: tuple[str, ...], condition: str) -> str:
    """One row of values (``now()`` where flagged), only if ``condition`` holds."""
    values = ", ".join(
        "now()" if is_now else f"%s::{cast}" for is_now, cast in zip(flags, casts, strict=True)
    )
    return f"SELECT {values} WHERE {condition}"
