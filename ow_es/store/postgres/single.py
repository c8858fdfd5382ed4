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
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, cast

import psycopg

from ow_es.store import codec, statements, tables
from ow_es.store.port import Single
from ow_es.store.postgres import batched
from ow_es.store.postgres.batched import Parts, Shape
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
        # The claims in one statement (store/postgres/claim.py).
        self.claim = claims.claim
        self.claim_offered = claims.claim_offered

    async def write_singles(self, singles: Sequence[Single]) -> list[datetime | None]:
        """Alone in autocommit, or several in one pipelined transaction (in the order given,
        run id order; alike appends as one statement). A lost deadlock leaves them all to the
        general path."""
        parts = [statement(s, self._channels) for s in singles]
        async with self._connection("appending events") as conn:
            try:
                written = await _execute(conn, parts, self._gate_key)
            except RETRYABLE:
                return [None] * len(singles)
        return [cast(datetime, now) if ok else None for ok, now in written]


async def _execute(
    conn: psycopg.AsyncConnection[Any], parts: list[Parts], gate_key: int
) -> list[tuple[bool, Any]]:
    """Whether each append was written, and the transaction's time. Appends of one shape go
    out as one statement (``batched``) where they can, else as one ``executemany`` (its query
    converted and its statement parsed once)."""
    if len(parts) == 1:
        (one,) = parts
        cur = await conn.execute(cast(Any, _sql(one.shape)), one.params(gate_key), prepare=True)
        row = cast(tuple[Any, ...], await cur.fetchone())
        return [(bool(row[0]), row[1])]
    groups: dict[Shape, list[int]] = {}
    for index, part in enumerate(parts):
        groups.setdefault(part.shape, []).append(index)
    sent: list[tuple[list[int], psycopg.AsyncCursor[Any], bool]] = []
    async with conn.pipeline(), conn.transaction():
        for shape, members in groups.items():
            cur = conn.cursor()
            group = [parts[i] for i in members]
            if len(members) > 1 and batched.batchable(shape, group):
                await cur.execute(
                    cast(Any, batched.sql(shape)), batched.params(shape, group, gate_key)
                )
                sent.append((members, cur, True))
            else:
                params = [parts[i].params(gate_key) for i in members]
                await cur.executemany(cast(Any, _sql(shape)), params, returning=True)
                sent.append((members, cur, False))
    written: list[tuple[bool, Any]] = [(False, None)] * len(parts)
    for members, cur, as_one in sent:
        if as_one:
            indexes, now, *_ = cast(tuple[Any, ...], await cur.fetchone())
            for position in indexes or ():
                written[members[position]] = (True, now)
            continue
        for count, index in enumerate(members):
            if count:
                cur.nextset()
            row = cast(tuple[Any, ...], await cur.fetchone())
            written[index] = (bool(row[0]), row[1])
    return written


def statement(single: Single, channels: Channels) -> Parts:
    """The append's statement in parts; its one row is (run rows written, now())."""
    mark = single.time.hook(_NOW)

    def now_flags(row: tuple[Any, ...] | list[Any]) -> tuple[bool, ...]:
        return tuple(v is _NOW for v in row)

    def present(row: tuple[Any, ...] | list[Any]) -> list[Any]:
        return [v for v in row if v is not _NOW]

    if single.old is None:
        values = tables.values(RUNS, single.new, mark)
        run_shape: tuple[Any, ...] = ("insert", now_flags(values))
        run = present(values)
    else:
        changes = tables.changes(RUNS, [(single.old, single.new)], mark)
        ((columns, (row,)),) = changes.items()
        *changed, namespace, run_id = row
        run_shape = ("update", tuple(zip(columns, now_flags(changed), strict=True)))
        run = [*present(changed), namespace, run_id, single.old.seq, single.claim_token]
    events = [codec.event_values(e, mark) for e in single.plan.events]
    steps = [tables.values(STEPS, s, mark) for s in single.plan.steps]
    notes = list(channels.payloads(ready=single.plan.ready, done=single.plan.done))
    shape = (
        run_shape,
        tuple(now_flags(e) for e in events),
        tuple(now_flags(s) for s in steps),
        tuple(note.sql for note in notes),
    )
    return Parts(
        shape=shape,
        run=run,
        events=[present(e) for e in events],
        steps=[present(s) for s in steps],
        notes=[p for note in notes for p in note.params],
    )


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
