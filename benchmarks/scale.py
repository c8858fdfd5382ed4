"""(f) scale: (a), (b) and (c) again as the tables fill with history.

In a schema of its own (so that its baseline is an empty database, and its million events do
not weigh on the other phases), one namespace is measured empty, then seeded in steps with
``seed.sql`` (terminal and parked runs, their events and step attempts, VACUUM ANALYZE and a
CHECKPOINT after each step) and measured again after each step: a growth curve, whose last
point is compared with the first. The measured runs live in the seeded namespace itself,
beside the history.

(c) is a one-second run: at each point it runs ``C_RUNS`` times and the median counts, and the
bare insert+commit is measured beside it, so that a point where the whole machine was slower
shows as such.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable

import floor
import phases
import psycopg
from psycopg import sql
from records import Scale, ScalePoint
from seed import Seeder, events_for, parked_among
from target import Target, client, create_schema, drop_schema

C_RUNS = 3  # (c) runs at each point; the median counts


async def _sizes(url: str, schema: str) -> tuple[int, int]:
    """Rows of events and of workflow_runs (the whole schema)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        counts = []
        for table in ("events", "workflow_runs"):
            cur = await conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            )
            row = await cur.fetchone()
            counts.append(int(row[0]) if row else 0)
        return counts[0], counts[1]


async def _point(
    target: Target, namespace: str, seeded: int, sizes: dict[str, int | float]
) -> ScalePoint:
    events, runs = await _sizes(target.url, target.schema)
    a = await phases.throughput(target, namespace, runs=int(sizes["runs"]))
    b = await phases.latency(
        target, namespace, runs=int(sizes["latency_runs"]), rate=float(sizes["rate"])
    )
    c_runs = [
        (await phases.sequential(target, namespace, steps=int(sizes["steps"]))).ms_per_step
        for _ in range(C_RUNS)
    ]
    insert_commit = await floor.insert_commit_p50(target.url, target.schema)
    return ScalePoint(
        seeded_runs=seeded,
        events=events,
        workflow_runs=runs,
        workflows_per_s=a.workflows_per_s,
        worker_cpu_ms_per_run=a.worker_cpu_ms_per_run,
        p50_ms=b.p50_ms,
        p99_ms=b.p99_ms,
        claim_p50_ms=b.claim_p50_ms,
        ms_per_step=statistics.median(c_runs),
        ms_per_step_runs=c_runs,
        insert_commit_ms=insert_commit,
    )


async def measure(
    target: Target,
    namespace: str,
    *,
    seed_runs: int = 110_000,
    points: int = 4,
    park_every: int = 11,
    sizes: dict[str, int | float],
    progress: Callable[[str], None] = lambda _: None,
) -> Scale:
    """``sizes``: the (a)-(c) sizes (runs, latency_runs, rate, steps), as in the other phases."""
    own = dataclasses.replace(target, schema=f"{target.schema}_scale")
    await create_schema(own.url, own.schema)
    try:
        seeder = Seeder(
            own.url,
            own.schema,
            namespace,
            total=seed_runs,
            park_every=park_every,
            progress=progress,
        )
        async with client(own, namespace):
            pass  # the migrations
        result = Scale(
            seed_runs=seed_runs,
            seed_terminal=seed_runs - parked_among(seed_runs, park_every),
            seed_parked=parked_among(seed_runs, park_every),
            seed_events=events_for(seed_runs, park_every),
            seed_seconds=0.0,
        )
        for step in range(points + 1):
            await seeder.seed_until(seed_runs * step // points)
            progress(f"(f) measuring (a)-(c) with {seeder.events:,} seeded events ...")
            result.points.append(await _point(own, namespace, seeder.written, sizes))
        result.seed_seconds = seeder.seconds
        result.checkpointed = seeder.checkpointed
        return result
    finally:
        await drop_schema(own.url, own.schema)
