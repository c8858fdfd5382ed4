"""The claim owner's append on PostgreSQL in one autocommit statement.

The worker holding a run usually knows its row exactly: it is the row its own last append
returned. For the common appends (a step's start, end or failure, the run's end) the new rows
can then be folded without reading anything, and the whole append is one statement: update the
run row on the condition that it is still at that ``seq`` under that claim, and insert the
events and step rows only if it was. One round trip and one commit, against two round trips
in a pipelined transaction on the general path. When the condition fails (someone else
appended, the claim was lost), nothing is written and the caller takes the general path, which
decides with the locked row.

Times: the plan is folded with a marker time; every value that *is* the marker is written as
the statement's ``now()``, so events and rows carry the transaction's time as on the general
path, and the returned row is patched with it.

Locks: the statement locks the tables before it can ask for the append gate, the reverse of
the general path's order. So it only *tries* the gate: when a reproject holds it or waits for
it, nothing is written and the general path waits for the gate instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.models import STEP_COLUMNS, WorkflowRun
from ow_es.store import codec
from ow_es.store.base import Appended, AppendRequest
from ow_es.store.planner import Plan, plan_updates

# Events whose fold needs no clock comparison and no other run (a run with a parent tells it
# of its end: the general path does that).
_SIMPLE = (ev.StepStarted, ev.StepCompleted, ev.StepFailed, ev.RunCompleted, ev.RunFailed)

_NOW = object()  # a parameter written as now()

_EVENT_CASTS = ("text", "text", "integer", "text", "smallint", "jsonb", "timestamptz")
_STEP_CASTS = {
    "attempt": "integer",
    "input": "jsonb",
    "output": "jsonb",
    "error": "jsonb",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
}
_TIME_FIELDS = tuple(f for f in WorkflowRun.__struct_fields__ if f.endswith(("_at", "_until")))


@dataclass(frozen=True)
class OwnerAppend:
    plan: Plan
    marker: datetime
    old: WorkflowRun
    new: WorkflowRun


def prepare(namespace: str, request: AppendRequest) -> OwnerAppend | None:
    """The plan of ``request`` folded on the row its writer knows, if this path can take it."""
    known = request.known
    if (
        known is None
        or request.claim_token is None
        or known.claim_token != request.claim_token
        or known.status != "running"
        or known.parent_run_id is not None
        or (request.expected_seq is not None and request.expected_seq != known.seq)
        or not request.events
        or not all(isinstance(e, _SIMPLE) for e in request.events)
    ):
        return None
    marker = utcnow()
    plan = plan_updates(namespace, marker, [(0, request)], {known.id: known})
    if plan.follow_ups or plan.ready or not isinstance(plan.outcomes.get(0), Appended):
        return None
    ((old, new),) = plan.updated_runs
    return OwnerAppend(plan=plan, marker=marker, old=old, new=new)


def statement(
    owner: OwnerAppend, gate_key: int, done_channel: str, token: str
) -> tuple[str, list[Any]]:
    """The statement and its parameters; its one row is (rows updated, now())."""

    def mark(value: Any) -> Any:
        return _NOW if value is owner.marker else value

    ((columns, (values,)),) = codec.run_changes([(owner.old, owner.new)], time=mark).items()
    *changed, namespace, run_id = values
    events = [
        (
            e.namespace_id,
            e.run_id,
            e.seq,
            e.data.TYPE,
            e.data.SCHEMA_VERSION,
            codec.dumps(e.data),
            mark(e.created_at),
        )
        for e in owner.plan.events
    ]
    steps = [codec.step_values(s, time=mark) for s in owner.plan.steps]
    shape = (
        tuple(zip(columns, (v is _NOW for v in changed), strict=True)),
        tuple(tuple(v is _NOW for v in row) for row in events),
        tuple(tuple(v is _NOW for v in row) for row in steps),
        bool(owner.plan.done),
    )
    params: list[Any] = [gate_key]
    params += [v for v in changed if v is not _NOW]
    params += [namespace, run_id, owner.old.seq, token]
    for row in (*events, *steps):
        params += [v for v in row if v is not _NOW]
    if owner.plan.done:
        params += [done_channel, run_id]
    return _sql(shape), params


@functools.cache
def _sql(shape: tuple[Any, ...]) -> str:
    run_columns, event_rows, step_rows, notify = shape
    assignments = ", ".join(
        f"{c} = now()"
        if is_now
        else f"{c} = %s::jsonb"
        if c in codec.JSON_RUN_COLUMNS
        else f"{c} = %s"
        for c, is_now in run_columns
    )
    parts = [
        "WITH gate AS (SELECT pg_try_advisory_xact_lock_shared(%s) AS held)",
        f"run AS (UPDATE workflow_runs SET {assignments}"
        " WHERE namespace_id = %s AND id = %s AND seq = %s AND claim_token = %s"
        " AND status = 'running' AND (SELECT held FROM gate) RETURNING id)",
        "event AS (INSERT INTO events"
        " (namespace_id, run_id, seq, type, schema_version, data, created_at) "
        + _rows(event_rows, _EVENT_CASTS)
        + ")",
    ]
    if step_rows:
        step_casts = tuple(_STEP_CASTS.get(c, "text") for c in STEP_COLUMNS)
        parts.append(
            f"step AS (INSERT INTO step_attempts ({', '.join(STEP_COLUMNS)}) "
            + _rows(step_rows, step_casts)
            + " ON CONFLICT (namespace_id, run_id, step_name, attempt) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in STEP_COLUMNS if c not in _STEP_KEY)
            + ")"
        )
    if notify:
        parts.append("note AS (SELECT pg_notify(%s, %s) FROM run)")
        final = "SELECT (SELECT count(*) FROM run), now(), (SELECT count(*) FROM note)"
    else:
        final = "SELECT (SELECT count(*) FROM run), now()"
    return ",\n".join(parts) + "\n" + final


_STEP_KEY = ("namespace_id", "run_id", "step_name", "attempt")


def _rows(rows: tuple[tuple[bool, ...], ...], casts: tuple[str, ...]) -> str:
    """``SELECT ... UNION ALL SELECT ...``, each row only if the run row was updated."""
    selects = [
        "SELECT "
        + ", ".join(
            "now()" if is_now else f"%s::{cast}" for is_now, cast in zip(row, casts, strict=True)
        )
        + " WHERE EXISTS (SELECT FROM run)"
        for row in rows
    ]
    return " UNION ALL ".join(selects)


def outcome(owner: OwnerAppend, now: datetime) -> Appended:
    """The append's outcome, with the marker replaced by the transaction's time."""
    changes = {f: now for f in _TIME_FIELDS if getattr(owner.new, f) is owner.marker}
    run = msgspec.structs.replace(owner.new, **changes) if changes else owner.new
    return Appended(run=run, first_seq=owner.old.seq + 1)
