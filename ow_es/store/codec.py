"""Row and event conversions shared by the adapters (msgspec on the hot path)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from ow_es.errors import ValidationError
from ow_es.events import EVENT_TYPES, decode_data, to_dict
from ow_es.models import RUN_COLUMNS, STEP_COLUMNS, Event, RunPage, StepAttempt, WorkflowRun
from ow_es.projections import Recorded

_encoder = msgspec.json.Encoder()
JSON_RUN_COLUMNS = frozenset({"input", "output", "error", "waiting_for"})
JSON_STEP_COLUMNS = frozenset({"input", "output", "error"})


_RUN_JSON = [i for i, c in enumerate(RUN_COLUMNS) if c in JSON_RUN_COLUMNS]
_RUN_TIMES = [i for i, c in enumerate(RUN_COLUMNS) if c.endswith(("_at", "_until"))]
_STEP_JSON = [i for i, c in enumerate(STEP_COLUMNS) if c in JSON_STEP_COLUMNS]
_STEP_TIMES = [i for i, c in enumerate(STEP_COLUMNS) if c.endswith("_at")]


def _values(
    row: msgspec.Struct, json: list[int], times: list[int], time: Callable[[Any], Any] | None
) -> tuple[Any, ...]:
    values = list(msgspec.structs.astuple(row))
    for index in json:
        values[index] = dumps_or_null(values[index])
    if time is not None:
        for index in times:
            values[index] = time(values[index])
    return tuple(values)


def run_values(run: WorkflowRun, time: Callable[[Any], Any] | None = None) -> tuple[Any, ...]:
    """A run row as statement parameters in column order (JSON encoded; times via ``time``)."""
    return _values(run, _RUN_JSON, _RUN_TIMES, time)


def event_values(rec: Recorded, time: Callable[[Any], Any] | None = None) -> tuple[Any, ...]:
    """An event as insert parameters: namespace, run, seq, type, schema version, JSON data,
    time (via ``time``)."""
    at = rec.created_at if time is None else time(rec.created_at)
    data = rec.data
    return (rec.namespace_id, rec.run_id, rec.seq, data.TYPE, data.SCHEMA_VERSION, dumps(data), at)


def step_values(step: StepAttempt, time: Callable[[Any], Any] | None = None) -> tuple[Any, ...]:
    return _values(step, _STEP_JSON, _STEP_TIMES, time)


_UPDATABLE = [c for c in RUN_COLUMNS if c not in ("namespace_id", "id")]


def run_changes(
    pairs: list[tuple[WorkflowRun, WorkflowRun]], time: Callable[[Any], Any] | None = None
) -> dict[tuple[str, ...], list[tuple[Any, ...]]]:
    """Group run updates by the columns they change, with parameters (changed values, then
    namespace and id). Writing only what changed keeps a large input or output from being
    re-encoded and rewritten on every step."""
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for old, new in pairs:
        columns = []
        values: list[Any] = []
        for column in _UPDATABLE:
            before, after = getattr(old, column), getattr(new, column)
            if before is after or before == after:
                continue
            columns.append(column)
            if column in JSON_RUN_COLUMNS:
                after = dumps_or_null(after)
            elif time is not None and column.endswith(("_at", "_until")):
                after = time(after)
            values.append(after)
        if columns:
            groups.setdefault(tuple(columns), []).append((*values, new.namespace_id, new.id))
    return groups


def dumps(value: Any) -> str:
    return _encoder.encode(value).decode()


def dumps_or_null(value: Any) -> str | None:
    return None if value is None else dumps(value)


def run_from_row(row: dict[str, Any]) -> WorkflowRun:
    waiting = row.get("waiting_for")
    if waiting and isinstance(waiting.get("until"), str):
        # A time inside the JSON column: a datetime in Python, as every other time is.
        row["waiting_for"] = {**waiting, "until": datetime.fromisoformat(waiting["until"])}
    return msgspec.convert(row, WorkflowRun, strict=False)


def step_from_row(row: dict[str, Any]) -> StepAttempt:
    return msgspec.convert(row, StepAttempt, strict=False)


def event_from_row(row: dict[str, Any]) -> Event:
    return msgspec.convert(row, Event, strict=False)


def recorded_from_event(event: Event) -> Recorded:
    return Recorded(
        namespace_id=event.namespace_id,
        run_id=event.run_id,
        seq=event.seq,
        created_at=event.created_at,
        data=decode_data(event.type, event.schema_version, event.data),
    )


def recorded_from_json(
    namespace_id: str,
    run_id: str,
    seq: int,
    event_type: str,
    schema_version: int,
    data: str | bytes,
    created_at: datetime,
) -> Recorded:
    """A stored event straight from its JSON text: decoded once, into its own type."""
    cls = EVENT_TYPES[event_type]
    if schema_version == cls.SCHEMA_VERSION:
        typed = msgspec.json.decode(data, type=cls)
    else:
        typed = decode_data(event_type, schema_version, msgspec.json.decode(data))
    return Recorded(
        namespace_id=namespace_id, run_id=run_id, seq=seq, created_at=created_at, data=typed
    )


def current_shape(event: Event) -> Event:
    """The event with its data upcast to the current schema version of its type."""
    cls = EVENT_TYPES[event.type]
    if event.schema_version == cls.SCHEMA_VERSION:
        return event
    data = to_dict(decode_data(event.type, event.schema_version, event.data))
    return msgspec.structs.replace(event, data=data, schema_version=cls.SCHEMA_VERSION)


def encode_cursor(created_at: datetime, run_id: str) -> str:
    raw = dumps([created_at.isoformat(), run_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, run_id = msgspec.json.decode(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created), str(run_id)
    except (ValueError, TypeError, msgspec.DecodeError):
        raise ValidationError(f"invalid cursor {cursor!r}") from None


def page_of(runs: list[WorkflowRun], limit: int) -> RunPage:
    if len(runs) > limit:
        last = runs[limit - 1]
        return RunPage(runs=runs[:limit], next_cursor=encode_cursor(last.created_at, last.id))
    return RunPage(runs=runs, next_cursor=None)
