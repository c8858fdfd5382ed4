"""Common appends on PostgreSQL in one autocommit statement.

Two appends are by far the most frequent, and neither needs to read anything first:

* a new run (``start()``): the row and its first event are folded from the request alone;
* the claim owner's step start, end or failure, or the run's completion: the worker knows the
  run's row, the one its own last append returned.

Each is then one statement: insert the run row (if its id and idempotency key are free), or
update it on the condition that it is still at that ``seq`` under that claim; insert the events
and step rows only if that happened; notify. One round trip and one commit, against two round
trips in a pipelined transaction on the general path. When the statement writes nothing (a
taken key, a run that changed, a lost claim), the caller takes the general path, which decides
with the locked rows and reports the outcome.

Which appends qualify, and their plans, are decided by the rules (``rules.single``); this
module only writes them. Times: the plan is folded with the transaction-time marker
(``tables.TxTime``); every value that *is* the marker is written as the statement's ``now()``.

Locks: the statement holds its table locks before it could ask for the append gate, the
reverse of the general path's order, so it only *tries* the gate: while a reproject holds it or
waits for it, nothing is written and the general path waits for the gate instead.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, cast

import psycopg

from ow_es.store import codec, statements, tables
from ow_es.store.port import Single
from ow_es.store.postgres.claim import OneStatementClaims
from ow_es.store.postgres.errors import RETRYABLE
from ow_es.store.postgres.wake import Channels
from ow_es.store.tables import EVENTS, RUNS, STEPS, Table

_NOW = object()  # a parameter written as now()
Connect = Callable[[str], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


class OneStatementAppends:
    """Writes planned appends, one statement each (see ``port.OneStatementWrites``)."""

    def __init__(
        self, connection: Connect, gate_key: int, channels: Channels, claims: OneStatementClaims
    ) -> None:
        self._connection = connection
        self._gate_key = gate_key
        self._channels = channels
        self.claim = claims.claim  # the claim in one statement (store/postgres/claim.py)

    async def write_singles(self, singles: Sequence[Single]) -> list[datetime | None]:
        """Alone in autocommit, or several in one pipelined transaction (in the order given,
        run id order). A lost deadlock leaves them all to the general path."""
        statements = [statement(s, self._gate_key, self._channels) for s in singles]
        async with self._connection("appending events") as conn:
            try:
                rows = await _execute(conn, statements)
            except RETRYABLE:
                return [None] * len(singles)
        return [cast(datetime, row[1]) if row[0] else None for row in rows]


async def _execute(
    conn: psycopg.AsyncConnection[Any], statements: list[tuple[str, list[Any]]]
) -> list[tuple[Any, ...]]:
    """Each statement's one row. Neighbours of one text go out as one ``executemany`` (its
    query converted and its statement parsed once), still in the order given."""
    if len(statements) == 1:
        ((query, params),) = statements
        cur = await conn.execute(cast(Any, query), params, prepare=True)
        return [cast(tuple[Any, ...], await cur.fetchone())]
    groups: list[tuple[psycopg.AsyncCursor[Any], int]] = []
    async with conn.pipeline(), conn.transaction():
        for query, group in itertools.groupby(statements, key=lambda s: s[0]):
            params = [p for _, p in group]
            cur = conn.cursor()
            await cur.executemany(cast(Any, query), params, returning=True)
            groups.append((cur, len(params)))
    rows: list[tuple[Any, ...]] = []
    for cur, count in groups:
        for index in range(count):
            if index:
                cur.nextset()
            rows.append(cast(tuple[Any, ...], await cur.fetchone()))
    return rows


def statement(single: Single, gate_key: int, channels: Channels) -> tuple[str, list[Any]]:
    """The statement and its parameters; its one row is (run rows written, now())."""
    mark = single.time.hook(_NOW)

    def now_flags(row: tuple[Any, ...] | list[Any]) -> tuple[bool, ...]:
        return tuple(v is _NOW for v in row)

    def present(row: tuple[Any, ...] | list[Any]) -> list[Any]:
        return [v for v in row if v is not _NOW]

    params: list[Any] = [gate_key]
    if single.old is None:
        values = tables.values(RUNS, single.new, mark)
        run_shape: tuple[Any, ...] = ("insert", now_flags(values))
        params += present(values)
    else:
        changes = tables.changes(RUNS, [(single.old, single.new)], mark)
        ((columns, (row,)),) = changes.items()
        *changed, namespace, run_id = row
        run_shape = ("update", tuple(zip(columns, now_flags(changed), strict=True)))
        params += [*present(changed), namespace, run_id, single.old.seq, single.claim_token]
    events = [codec.event_values(e, mark) for e in single.plan.events]
    steps = [tables.values(STEPS, s, mark) for s in single.plan.steps]
    for values in (*events, *steps):
        params += present(values)
    notes = list(channels.payloads(ready=single.plan.ready, done=single.plan.done))
    for note in notes:
        params += note.params
    shape = (
        run_shape,
        tuple(now_flags(e) for e in events),
        tuple(now_flags(s) for s in steps),
        tuple(note.sql for note in notes),
    )
    return _sql(shape), params


@functools.cache
def _sql(shape: tuple[Any, ...]) -> str:
    (kind, run_flags), event_rows, step_rows, notes = shape
    parts = ["WITH gate AS (SELECT pg_try_advisory_xact_lock_shared(%s) AS held)"]
    if kind == "insert":
        parts.append(
            f"run AS (INSERT INTO {RUNS.name} ({', '.join(RUNS.names)}) "
            + _select(run_flags, RUNS, "(SELECT held FROM gate)")
            + " ON CONFLICT DO NOTHING RETURNING id)"
        )
    else:
        assignments = ", ".join(
            f"{c} = now()" if is_now else f"{c} = %s::{RUNS.by_name[c].type}"
            for c, is_now in run_flags
        )
        parts.append(
            f"run AS (UPDATE {RUNS.name} SET {assignments}"
            " WHERE namespace_id = %s AND id = %s AND seq = %s AND claim_token = %s"
            " AND status = 'running' AND (SELECT held FROM gate) RETURNING id)"
        )
    written = "EXISTS (SELECT FROM run)"
    parts.append(
        f"event AS (INSERT INTO {EVENTS.name} ({', '.join(EVENTS.names)}) "
        + " UNION ALL ".join(_select(row, EVENTS, written) for row in event_rows)
        + ")"
    )
    if step_rows:
        parts.append(
            f"step AS (INSERT INTO {STEPS.name} ({', '.join(STEPS.names)}) "
            + " UNION ALL ".join(_select(row, STEPS, written) for row in step_rows)
            + f" {statements.upsert_clause(STEPS)})"
        )
    final = "SELECT (SELECT count(*) FROM run), now()"
    if notes:
        notify = " UNION ALL ".join(f"SELECT {note} FROM run" for note in notes)
        parts.append(f"note AS ({notify})")
        final += ", (SELECT count(*) FROM note)"
    return ",\n".join(parts) + "\n" + final


def _select(flags: tuple[bool, ...], table: Table, condition: str) -> str:
    """One row of values (``now()`` where flagged), only if ``condition`` holds."""
    values = ", ".join(
        "now()" if is_now else statements.placeholder(column, "postgres")
        for is_now, column in zip(flags, table.columns, strict=True)
    )
    return f"SELECT {values} WHERE {condition}"
