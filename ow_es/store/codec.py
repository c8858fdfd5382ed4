"""Rows and events to and from what the adapters read and write (msgspec on the hot path)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import msgspec

from ow_es.errors import ValidationError
from ow_es.events import EVENT_TYPES, decode_data, to_dict
from ow_es.models import Event, RunPage, StepAttempt, WorkflowRun
from ow_es.projections import Recorded
from ow_es.store.tables import TimeHook, dumps


def event_values(rec: Recorded, time: TimeHook | None = None) -> tuple[Any, ...]:
    """An event as insert parameters, in the order of ``tables.EVENTS``."""
    at = rec.created_at if time is None else time(rec.created_at)
    data = rec.data
    return (rec.namespace_id, rec.run_id, rec.seq, data.TYPE, data.SCHEMA_VERSION, dumps(data), at)


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
