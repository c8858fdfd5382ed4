"""Seed a namespace with a big history, fast: the statements of ``seed.sql`` (PostgreSQL).

The rows are shaped exactly as real runs of ``bench_workflows.seed_done`` (terminal, 9 events)
and ``seed_sleep`` (parked far in the future, 10 events) write them: events, ``workflow_runs``
and ``step_attempts`` agree, so ``reproject(verify=True)`` finds no difference (checked by
``tests/test_query_plans.py``). The defaults, 110,000 runs of which every 11th is parked,
make 100,000 terminal runs, 10,000 parked runs and 1,000,000 events.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg import sql

SQL_FILE = Path(__file__).with_name("seed.sql")
WORKER_ID = "seed-host:1:seedseed"
SPACING_SECONDS = 5.0  # between two runs' creation: 110,000 runs span about six days
BATCH = 10_000  # runs per statement (one transaction)
_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.M)


def statements() -> dict[str, str]:
    parts = _HEADER.split(SQL_FILE.read_text())
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def parked_among(runs: int, park_every: int) -> int:
    """Parked runs among the first ``runs`` (run i is parked when i % park_every is the last)."""
    return runs // park_every


def events_for(runs: int, park_every: int) -> int:
    parked = parked_among(runs, park_every)
    return (runs - parked) * 9 + parked * 10


class Seeder:
    """Writes ``total`` runs into ``namespace``, in as many steps as asked (``seed_until``):
    the whole history's times are fixed at the start, so a history seeded in steps is the
    same as one seeded at once. Each step ends with VACUUM (ANALYZE) of the tables, as a
    production database's autovacuum would have done, and a CHECKPOINT: the bulk load's dirty
    pages are written out before the measurements, not during them (a real history grows over
    months, its writes spread over many checkpoints)."""

    def __init__(
        self,
        url: str,
        schema: str,
        namespace: str,
        *,
        total: int = 110_000,
        park_every: int = 11,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.url, self.schema, self.namespace = url, schema, namespace
        self.total, self.park_every = total, park_every
        self.progress = progress
        self.written = 0  # runs written so far
        self.events = 0
        self.seconds = 0.0  # writing and vacuuming, so far
        self.checkpointed = True  # every step's CHECKPOINT ran (the role may lack the right)
        self._params: dict[str, Any] | None = None

    async def seed_until(self, runs: int) -> None:
        runs = min(runs, self.total)
        if runs <= self.written:
            return
        began = time.perf_counter()
        queries = statements()
        async with await psycopg.AsyncConnection.connect(
            self.url, options=f"-c search_path={self.schema}", connect_timeout=10
        ) as conn:
            await conn.execute(cast(Any, queries["functions"]))
            params = self._params or await self._times(conn)
            for first in range(self.written, runs, BATCH):
                last = min(first + BATCH, runs) - 1
                cur = await conn.execute(
                    cast(Any, queries["batch"]), {**params, "first": first, "last": last}
                )
                written = await cur.fetchone()
                assert written is not None
                await conn.commit()
                self.written = last + 1
                self.events += int(written[2])
                self.progress(
                    f"(f) seeded {self.written:,}/{self.total:,} runs, {self.events:,} events"
                )
        await vacuum(self.url, self.schema)
        self.checkpointed = await checkpoint(self.url) and self.checkpointed
        self.seconds += time.perf_counter() - began

    async def _times(self, conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
        cur = await conn.execute("SELECT now()")
        row = await cur.fetchone()
        assert row is not None
        now = row[0]
        self._params = {
            "ns": self.namespace,
            "salt": f"{self.namespace}:{secrets.token_hex(4)}",
            "park_every": self.park_every,
            "base": now - timedelta(seconds=self.total * SPACING_SECONDS + 3600),
            "spacing": SPACING_SECONDS,
            "wake": now + timedelta(days=365),
            "worker": WORKER_ID,
        }
        return self._params


async def vacuum(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for table in ("events", "workflow_runs", "step_attempts"):
            await conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(schema, table)))


async def checkpoint(url: str) -> bool:
    """Write out the dirty pages now; False where the role may not (then the figures after a
    seeding step may carry its write-out)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        try:
            await conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            return False
        return True
