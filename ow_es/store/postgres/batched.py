"""Several claim owners' appends of one shape (a step's record, most often), as one statement.

A group commit holds the appends of many runs, and most are alike: the same row columns
changed, the same number of events and step rows. Sent as one statement each, every one pays
its own bind, executor start and reply; here the group is one statement that reads each
part's rows as one JSON document (``json_to_recordset``): one parameter each, encoded in one
call. It keeps each append's condition: a run's row is updated only if it is still at the
planned ``seq`` under that claim, and its events and step rows are written only if it was.
The reply names the appends written; the others take the general path, as after a one-row
statement that wrote nothing.

A run's end tells its waiters (the "done" channel, the run's id as the payload): the group
sends the ids of the runs it wrote, in chunks that fit a payload. Other notifications (a run
made ready, to a worker's lane) keep their own statements.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ow_es.store import statements, tables
from ow_es.store.postgres.lanes import TO_THE_CHANNEL
from ow_es.store.tables import EVENTS, RUNS, STEPS, Table

Shape = tuple[Any, ...]  # (run, event rows, step rows, notes): see ``single.statement``


@dataclass
class Parts:
    """An append's statement: its shape (which picks the SQL) and its parameters in parts."""

    shape: Shape
    run: list[Any]  # the row's values (a new run), or the changed ones, then its key and fence
    events: list[list[Any]]  # each event's values, but those written as now()
    steps: list[list[Any]]  # each step row's values, likewise
    notes: list[Any]

    def params(self, gate_key: int) -> list[Any]:
        """The parameters of the statement of this append alone (``single._sql``)."""
        flat = [gate_key, *self.run]
        for values in (*self.events, *self.steps):
            flat += values
        return [*flat, *self.notes]


_IDS_PER_NOTE = 150  # run ids (32 characters and a comma) per "done" payload: under 7000 bytes


def batchable(shape: Shape, members: Sequence[Parts]) -> bool:
    """Updates of claimed runs' rows that notify nothing, or only their own end."""
    (kind, run_flags), _, _, notes = shape
    if kind != "update":
        return False
    if not notes:
        return True
    at = sum(1 for _, is_now in run_flags if not is_now) + 1  # the run id, in ``run``
    return notes == (TO_THE_CHANNEL,) and all(
        m.notes[1] == m.run[at] and m.notes[0] == members[0].notes[0] for m in members
    )


def params(shape: Shape, members: Sequence[Parts], gate_key: int) -> list[Any]:
    """The statement's parameters: each part's rows as one JSON array of objects (encoded in
    one call; the server reads it with ``json_to_recordset``)."""
    (_, run_flags), event_rows, step_rows, _ = shape
    changed = sum(1 for _, is_now in run_flags if not is_now)
    # A run part is its changed values, then namespace, id, seq and claim token; the namespace
    # (the same for all) is a parameter of its own.
    runs = [[*m.run[:changed], *m.run[changed + 1 :]] for m in members]
    keys = [*(f"c{i}" for i in range(changed)), "id", "seq", "token"]
    out: list[Any] = [gate_key, _rows_json(keys, runs), members[0].run[changed]]
    for rows, position in ((event_rows, "events"), (step_rows, "steps")):
        for index, flags in enumerate(rows):
            width = sum(1 for is_now in flags if not is_now)
            values = [getattr(m, position)[index] for m in members]
            out.append(_rows_json([f"c{i}" for i in range(width)], values))
    if shape[3]:
        out.append(members[0].notes[0])  # the "done" channel
    return out


def _rows_json(keys: list[str], rows: Sequence[Sequence[Any]]) -> str:
    return tables.dumps(
        [{"n": n, **dict(zip(keys, row, strict=True))} for n, row in enumerate(rows)]
    )


@functools.cache
def sql(shape: Shape) -> str:
    """The statement; its one row is (the indexes of the members written, now())."""
    (_, run_flags), event_rows, step_rows, notes = shape
    changed = [column for column, is_now in run_flags if not is_now]
    record = ["n integer", *(_field(f"c{i}", RUNS, c) for i, c in enumerate(changed))]
    record += [_field("id", RUNS, "id"), _field("seq", RUNS, "seq")]
    record += [_field("token", RUNS, "claim_token")]
    assignments = ", ".join(
        f"{column} = now()"
        if is_now
        else f"{column} = {_value('i', changed.index(column), RUNS, column)}"
        for column, is_now in run_flags
    )
    parts = [
        "WITH gate AS (SELECT pg_try_advisory_xact_lock_shared(%s) AS held)",
        f"input AS (SELECT * FROM json_to_recordset(%s::json) AS i({', '.join(record)}))",
        f"run AS (UPDATE {RUNS.name} w SET {assignments} FROM input i"
        " WHERE w.namespace_id = %s AND w.id = i.id AND w.seq = i.seq"
        " AND w.claim_token = i.token AND w.status = 'running' AND (SELECT held FROM gate)"
        " RETURNING i.n, i.id)",
        f"event AS (INSERT INTO {EVENTS.name} ({', '.join(EVENTS.names)}) "
        + " UNION ALL ".join(_select(EVENTS, flags) for flags in event_rows)
        + ")",
    ]
    if step_rows:
        parts.append(
            f"step AS (INSERT INTO {STEPS.name} ({', '.join(STEPS.names)}) "
            + " UNION ALL ".join(_select(STEPS, flags) for flags in step_rows)
            + f" {statements.upsert_clause(STEPS)})"
        )
    if notes:
        parts.append(
            "note AS (SELECT pg_notify(%s, string_agg(id, ',')) FROM"
            f" (SELECT id, (row_number() OVER () - 1) / {_IDS_PER_NOTE} AS chunk FROM run) AS o"
            " GROUP BY chunk)"
        )
    final = "SELECT (SELECT array_agg(n) FROM run), now()"
    if notes:
        final += ", (SELECT count(*) FROM note)"  # a CTE that only selects runs when read
    return ",\n".join(parts) + "\n" + final


def _field(name: str, table: Table, column: str) -> str:
    """A record field for the column: JSON values arrive as their text, read as jsonb after."""
    kind = table.by_name[column].type
    return f"{name} {'text' if kind == 'jsonb' else kind}"


def _value(alias: str, index: int, table: Table, column: str) -> str:
    cast = "::jsonb" if table.by_name[column].type == "jsonb" else ""
    return f"{alias}.c{index}{cast}"


def _select(table: Table, flags: tuple[bool, ...]) -> str:
    """Every member's row at one position, those of the members whose run row was written.
    (The branches run in order, so a run's events keep their order in the log.)"""
    given = [c.name for c, is_now in zip(table.columns, flags, strict=True) if not is_now]
    record = ", ".join(["n integer", *(_field(f"c{i}", table, c) for i, c in enumerate(given))])
    values = ", ".join(
        "now()" if is_now else _value("r", given.index(c.name), table, c.name)
        for c, is_now in zip(table.columns, flags, strict=True)
    )
    return (
        f"SELECT {values} FROM json_to_recordset(%s::json) AS r({record})"
        " WHERE r.n IN (SELECT n FROM run)"
    )
