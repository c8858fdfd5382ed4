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
from dataclasses import dataclass
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


@dataclass
class Seeded:
    runs: int
    terminal: int
    parked: int
    events: int
    step_attempts: int
    seconds: float  # writing them
    vacuum_seconds: float  # VACUUM (ANALYZE) of the three tables afterwards


def statements() -> dict[str, str]:
    parts = _HEADER.split(SQL_FILE.read_text())
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def events_for(runs: int, park_every: int) -> int:
    parked = runs // park_every
    return (runs - parked) * 9 + parked * 10


async def seed(
    url: str,
    schema: str,
    namespace: str,
    *,
    runs: int = 110_000,
    park_every: int = 11,
    progress: Callable[[str], None] = lambda _: None,
) -> Seeded:
    """Write ``runs`` runs into ``namespace`` (every ``park_every``-th parked), then VACUUM
    (ANALYZE) the tables, as a production database's autovacuum would have."""
    queries = statements()
    counts = {"runs": 0, "steps": 0, "events": 0}
    began = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(
        url, options=f"-c search_path={schema}", connect_timeout=10
    ) as conn:
        await conn.execute(cast(Any, queries["functions"]))
        cur = await conn.execute("SELECT now()")
        row = await cur.fetchone()
        assert row is not None
        now = row[0]
        base = now - timedelta(seconds=runs * SPACING_SECONDS + 3600)
        params: dict[str, Any] = {
            "ns": namespace,
            "salt": f"{namespace}:{secrets.token_hex(4)}",
            "park_every": park_every,
            "base": base,
            "spacing": SPACING_SECONDS,
            "wake": now + timedelta(days=365),
            "worker": WORKER_ID,
        }
        for first in range(0, runs, BATCH):
            last = min(first + BATCH, runs) - 1
            cur = await conn.execute(
                cast(Any, queries["batch"]), {**params, "first": first, "last": last}
            )
            written = await cur.fetchone()
            assert written is not None
            await conn.commit()
            for name, value in zip(("runs", "steps", "events"), written, strict=True):
                counts[name] += int(value)
            progress(f"(f) seeded {counts['runs']:,}/{runs:,} runs, {counts['events']:,} events")
    seconds = time.perf_counter() - began
    began = time.perf_counter()
    await vacuum(url, schema)
    parked = runs // park_every
    return Seeded(
        runs=counts["runs"],
        terminal=counts["runs"] - parked,
        parked=parked,
        events=counts["events"],
        step_attempts=counts["steps"],
        seconds=seconds,
        vacuum_seconds=time.perf_counter() - began,
    )


async def vacuum(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for table in ("events", "workflow_runs", "step_attempts"):
            await conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(schema, table)))
