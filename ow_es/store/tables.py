"""One definition per table: its columns, their types, its key, and the times the database
stamps. Every statement, parameter tuple and cast of both adapters is derived from here, so a
new projection column is a field on the model struct plus a migration.

Column types are PostgreSQL's; SQLite stores JSON and times as TEXT and integers as INTEGER
(``sqlite_type``). A test compares each migration's tables with these definitions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from ow_es.models import StepAttempt, WorkflowRun

_SQLITE_TYPES = {"jsonb": "TEXT", "timestamptz": "TEXT", "text": "TEXT"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # PostgreSQL type

    @property
    def is_json(self) -> bool:
        return self.type == "jsonb"

    @property
    def is_time(self) -> bool:
        return self.type == "timestamptz"

    @property
    def sqlite_type(self) -> str:
        return _SQLITE_TYPES.get(self.type, "INTEGER")


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @functools.cached_property
    def by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    @functools.cached_property
    def updatable(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.name not in self.key)

    @functools.cached_property
    def json_positions(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.columns) if c.is_json)

    @functools.cached_property
    def time_positions(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.columns) if c.is_time)

    @functools.cached_property
    def updatable_kinds(self) -> tuple[tuple[int, str, bool, bool], ...]:
        """(position, name, is JSON, is a time) of each updatable column, for the hot path."""
        return tuple(
            (i, c.name, c.is_json, c.is_time)
            for i, c in enumerate(self.columns)
            if c.name not in self.key
        )

    @functools.cached_property
    def key_positions(self) -> tuple[int, ...]:
        return tuple(self.names.index(k) for k in self.key)


def _sql_type(info: msgspec.inspect.Type) -> str:
    """The column type of a struct field (optional fields by their inner type)."""
    if isinstance(info, msgspec.inspect.UnionType):
        inner = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        return _sql_type(inner[0]) if len(inner) == 1 else "jsonb"
    if isinstance(info, msgspec.inspect.DateTimeType):
        return "timestamptz"
    if isinstance(info, msgspec.inspect.IntType):
        return "integer"
    if isinstance(info, msgspec.inspect.StrType | msgspec.inspect.LiteralType):
        return "text"
    return "jsonb"  # Any, dicts and lists


def _of(struct: type[msgspec.Struct], name: str, key: tuple[str, ...]) -> Table:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return Table(
        name=name, columns=tuple(Column(f.name, _sql_type(f.type)) for f in info.fields), key=key
    )


RUNS = _of(WorkflowRun, "workflow_runs", ("namespace_id", "id"))
STEPS = _of(StepAttempt, "step_attempts", ("namespace_id", "run_id", "step_name", "attempt"))
# The log as it is written: position and tx_id are the database's own (identity, xid).
EVENTS = Table(
    name="events",
    columns=(
        Column("namespace_id", "text"),
        Column("run_id", "text"),
        Column("seq", "integer"),
        Column("type", "text"),
        Column("schema_version", "smallint"),
        Column("data", "jsonb"),
        Column("created_at", "timestamptz"),
    ),
    key=("namespace_id", "run_id", "seq"),
)

_RUN_TIMES = tuple(c.name for c in RUNS.columns if c.is_time)
_encoder = msgspec.json.Encoder()


def dumps(value: Any) -> str:
    return _encoder.encode(value).decode()


def dumps_or_null(value: Any) -> str | None:
    return None if value is None else dumps(value)


TimeHook = Callable[[Any], Any]


def values(table: Table, row: msgspec.Struct, time: TimeHook | None = None) -> tuple[Any, ...]:
    """A row as statement parameters in column order: JSON columns encoded, times through
    ``time`` (the adapter's stamping of the transaction time and its own time format)."""
    out = list(msgspec.structs.astuple(row))
    for index in table.json_positions:
        out[index] = dumps_or_null(out[index])
    if time is not None:
        for index in table.time_positions:
            out[index] = time(out[index])
    return tuple(out)


def changes(
    table: Table, pairs: list[tuple[Any, Any]], time: TimeHook | None = None
) -> dict[tuple[str, ...], list[tuple[Any, ...]]]:
    """Row updates grouped by the columns they change, each with its parameters: the changed
    values, then the key. Writing only what changed keeps a large input or output from being
    re-encoded and rewritten on every step."""
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    astuple = msgspec.structs.astuple
    for old, new in pairs:
        names = []
        params: list[Any] = []
        before_row, after_row = astuple(old), astuple(new)
        for index, name, is_json, is_time in table.updatable_kinds:
            before, after = before_row[index], after_row[index]
            if before is after or before == after:
                continue
            names.append(name)
            if is_json:
                after = dumps_or_null(after)
            elif is_time and time is not None:
                after = time(after)
            params.append(after)
        if names:
            key = tuple(after_row[i] for i in table.key_positions)
            groups.setdefault(tuple(names), []).append((*params, *key))
    return groups


class TxTime:
    """The writing transaction's time, stamped one way on both backends.

    Rules fold events before the database has said what time it is, so they fold with
    ``marker``, a datetime object of its own (read from the local clock, so comparisons with
    it are about right). Every value that *is* the marker is written as the transaction's
    time: PostgreSQL's ``now()``, SQLite's clock read under its write lock. ``stamp`` does it
    for parameters and ``stamped`` for the rows handed back to callers.
    """

    def __init__(self, marker: datetime) -> None:
        self.marker = marker

    def hook(self, now: Any) -> TimeHook:
        """A parameter hook that writes ``now`` where the marker stands."""
        marker = self.marker
        return lambda value: now if value is marker else value

    def stamped(self, row: WorkflowRun, now: datetime) -> WorkflowRun:
        changed = {name: now for name in _RUN_TIMES if getattr(row, name) is self.marker}
        return msgspec.structs.replace(row, **changed) if changed else row
