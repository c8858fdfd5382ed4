"""The claim in one statement on PostgreSQL: select ready runs (``SKIP LOCKED``), update their
rows, append their ``run_claimed`` events and return the rows, in one round trip.

The row changes are those of folding ``run_claimed`` (``projections.runs``): a property test
(``tests/test_single_statement.py``) runs random rows through both and compares them, as for
the one-statement appends. The statement claims nothing, and the caller takes the transaction
path (``claim_rules.claim``), when a served workflow has stored limits (admitting runs of a
limit takes rounds) or the append gate is taken (a reproject is swapping). Ready runs past
their deadline are left to ``fail_overdue``, which it reports.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from psycopg.rows import dict_row

from ow_es import events as ev
from ow_es.errors import StoreUnavailable
from ow_es.store import codec
from ow_es.store.named_queries import load
from ow_es.store.port import Claimed, WorkflowKey
from ow_es.store.postgres.errors import RETRYABLE

if TYPE_CHECKING:
    from ow_es.store.postgres.store import PostgresStore

Q = load("postgres")
_FLAGS = ("gate_held", "limited", "overdue", "wake_at", "claim_order")


class OneStatementClaims:
    """Claims in one statement, for the adapter's ``single.claim``."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def claim(
        self, worker_id: str, workflows: Sequence[WorkflowKey], limit: int, lease_seconds: float
    ) -> Claimed | None:
        """Up to ``limit`` claimed runs; None where the transaction path must decide. After a
        connection failure the claim tokens (made here) tell which runs, if any, it claimed."""
        tokens = [uuid.uuid4().hex for _ in range(limit)]
        params = {
            "ns": self._store.namespace,
            "gate": self._store.gate_key,
            "names": sorted({name for name, _ in workflows}),
            "versions": sorted({version for _, version in workflows if version is not None}),
            "unversioned": any(version is None for _, version in workflows),
            "pairs_names": [name for name, _ in workflows],
            "pairs_versions": [version or "" for _, version in workflows],
            "worker": worker_id,
            "tokens": tokens,
            "lease": lease_seconds,
            "limit": limit,
            "schema_version": ev.RunClaimed.SCHEMA_VERSION,
        }
        try:
            async with self._store.connection("claiming runs") as conn:
                cur = conn.cursor(row_factory=dict_row)
                try:
                    await cur.execute(cast(Any, Q["claim_in_one"]), params, prepare=True)
                except RETRYABLE:
                    return None
                rows = await cur.fetchall()
        except StoreUnavailable:
            return await self._claimed_before(tokens)
        flags = rows[0]
        if not flags["gate_held"] or flags["limited"]:
            return None
        runs = [codec.run_from_row(_run_columns(row)) for row in rows if row["id"] is not None]
        claimed = Claimed(runs=runs, overdue=int(flags["overdue"]))
        if len(runs) < limit:  # the statement read the next timer too
            claimed.timers_read, claimed.next_wake_at = True, flags["wake_at"]
        return claimed

    async def _claimed_before(self, tokens: list[str]) -> Claimed | None:
        """The runs a statement whose reply was lost claimed (None: it claimed nothing, and
        the transaction path may claim instead)."""
        rows = await self._store.fetch(Q["claimed_by_tokens"], {"tokens": tokens}, "claiming")
        if not rows:
            return None
        return Claimed(runs=[codec.run_from_row(row) for row in rows])


def _run_columns(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in _FLAGS}
