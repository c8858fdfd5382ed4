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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from psycopg.rows import dict_row

from ow_es import events as ev
from ow_es.errors import StoreUnavailable
from ow_es.models import WorkflowRun
from ow_es.store import codec
from ow_es.store.named_queries import load
from ow_es.store.port import Claimed, WorkflowKey
from ow_es.store.postgres.errors import RETRYABLE

if TYPE_CHECKING:
    from ow_es.store.postgres.store import PostgresStore

Q = load("postgres")
_FLAGS = ("gate_held", "limited", "overdue", "wake_at", "others", "claim_order")


@dataclass
class _Reply:
    """A one-statement claim's runs, and its flags (None: its reply was lost, and the runs
    were read back by their tokens)."""

    runs: list[WorkflowRun]
    flags: dict[str, Any] | None = None

    @property
    def overdue(self) -> int:
        return 0 if self.flags is None else int(self.flags["overdue"])


class OneStatementClaims:
    """Claims in one statement, for the adapter's ``single.claim``."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def claim(
        self, worker_id: str, workflows: Sequence[WorkflowKey], limit: int, lease_seconds: float
    ) -> Claimed | None:
        """Up to ``limit`` claimed runs; None where the transaction path must decide. After a
        connection failure the claim tokens (made here) tell which runs, if any, it claimed."""
        reply = await self._execute("claim_in_one", worker_id, workflows, limit, lease_seconds)
        if reply is None:
            return None
        claimed = Claimed(runs=reply.runs, overdue=reply.overdue)
        if reply.flags is not None and len(reply.runs) < limit:  # it read the next timer too
            claimed.timers_read, claimed.next_wake_at = True, reply.flags["wake_at"]
        return claimed

    async def claim_offered(
        self, worker_id: str, workflows: Sequence[WorkflowKey], run_id: str, lease_seconds: float
    ) -> Claimed | None:
        """The run a lane wake-up named, if it is the one ``claim`` would take first (see
        ``claim_offered`` in queries.sql); None where the transaction path must decide.
        ``others`` says whether more may be ready; ``next_wake_at``, when the run is due later
        (no other timer is read)."""
        reply = await self._execute(
            "claim_offered", worker_id, workflows, 1, lease_seconds, {"id": run_id}
        )
        if reply is None:
            return None
        if reply.flags is None:
            return Claimed(runs=reply.runs, offered=True, others=True)
        return Claimed(
            runs=reply.runs,
            overdue=reply.overdue,
            offered=True,
            others=reply.flags["others"],
            next_wake_at=reply.flags["wake_at"],
        )

    async def _execute(
        self,
        query: str,
        worker_id: str,
        workflows: Sequence[WorkflowKey],
        limit: int,
        lease_seconds: float,
        extra: dict[str, Any] | None = None,
    ) -> _Reply | None:
        """The statement's reply; None where it may not claim (the gate taken, limits stored)
        or lost to a concurrent write."""
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
            **(extra or {}),
        }
        try:
            async with self._store.connection("claiming runs") as conn:
                cur = conn.cursor(row_factory=dict_row)
                try:
                    await cur.execute(cast(Any, Q[query]), params, prepare=True)
                except RETRYABLE:
                    return None
                rows = await cur.fetchall()
        except StoreUnavailable:
            lost = await self._claimed_before(tokens)
            return None if lost is None else _Reply([codec.run_from_row(row) for row in lost])
        flags = rows[0]
        if not flags["gate_held"] or flags["limited"]:
            return None
        return _Reply(_runs(rows), flags)

    async def _claimed_before(self, tokens: list[str]) -> list[dict[str, Any]] | None:
        """The rows a statement whose reply was lost claimed (None: it claimed nothing, and
        the transaction path may claim instead)."""
        rows = await self._store.fetch(Q["claimed_by_tokens"], {"tokens": tokens}, "claiming")
        return rows or None


def _runs(rows: list[dict[str, Any]]) -> list[WorkflowRun]:
    return [
        codec.run_from_row({k: v for k, v in row.items() if k not in _FLAGS})
        for row in rows
        if row.get("id") is not None
    ]
