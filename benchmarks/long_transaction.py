"""Draining a backlog while a transaction is held open elsewhere in the cluster.

A long transaction (a forgotten ``BEGIN`` in psql, a long report) keeps VACUUM from removing
any row version newer than its snapshot, so every update of ``workflow_runs`` leaves a dead
tuple behind until it ends. Updates that stay on their page (HOT: no indexed column changed,
room on the page) leave no index entries behind and can be pruned on the page itself; those
that do not bloat every index of the table. This program measures, in one run and on one
database, a drain of the same backlog with the projection tables at the fillfactor of the
migrations and at PostgreSQL's default of 100, both with and without a transaction held open:

    python benchmarks/long_transaction.py --database-url postgresql://postgres@127.0.0.1:5432/test

It prints, per case: drain time, runs/s, the share of HOT updates and the dead tuples left in
``workflow_runs`` and ``step_attempts``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_workflows import noop4

import ow_es


@dataclass
class Case:
    fillfactor: int | None  # None: as the migrations set it
    held_open: bool


@dataclass
class Result:
    case: Case
    seconds: float
    hot_share: float
    dead_runs: int
    dead_steps: int


def _stats(url: str, schema: str) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        rows = conn.execute(
            "SELECT relname, n_tup_upd, n_tup_hot_upd, n_dead_tup FROM pg_stat_user_tables"
            " WHERE schemaname = %s",
            [schema],
        ).fetchall()
    return {name: (upd, hot, dead) for name, upd, hot, dead in rows}


async def _drain(url: str, case: Case, runs: int) -> Result:
    schema = f"bench_lt_{uuid.uuid4().hex[:8]}"
    ow = ow_es.OpenWorkflow(url, schema=schema, pool_size=10)
    ow.register(noop4)
    await ow.connect()
    holder: psycopg.Connection[tuple[object, ...]] | None = None
    try:
        if case.fillfactor is not None:
            with psycopg.connect(url, autocommit=True) as conn:
                for table in ("workflow_runs", "step_attempts"):
                    conn.execute(
                        f'ALTER TABLE "{schema}".{table} SET (fillfactor = {case.fillfactor})'
                    )
        for start in range(0, runs, 500):
            await asyncio.gather(*(ow.start(noop4) for _ in range(start, min(runs, start + 500))))
        if case.held_open:
            holder = psycopg.connect(url)
            holder.execute("SELECT txid_current()")  # holds back the xmin horizon until closed
        before = _stats(url, schema)
        began = time.perf_counter()
        worker = ow.worker(concurrency=100, poll_interval="200ms")
        task = asyncio.create_task(worker.run())
        while (await ow.store.count_runs()).get(("bench-noop4", "completed"), 0) < runs:
            await asyncio.sleep(0.2)
        seconds = time.perf_counter() - began
        await worker.stop(timeout=5)
        await task
        after = _stats(url, schema)
        upd = after["workflow_runs"][0] - before["workflow_runs"][0]
        hot = after["workflow_runs"][1] - before["workflow_runs"][1]
        return Result(
            case=case,
            seconds=seconds,
            hot_share=hot / upd if upd else 0.0,
            dead_runs=after["workflow_runs"][2],
            dead_steps=after["step_attempts"][2],
        )
    finally:
        if holder is not None:
            holder.close()
        await ow.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument(
        "--fillfactors",
        default="migration,100",
        help="fillfactors to compare ('migration': as the migrations set it), comma-separated",
    )
    args = parser.parse_args()
    factors = [None if f == "migration" else int(f) for f in args.fillfactors.split(",")]
    cases = [Case(f, held) for f in factors for held in (False, True)]
    print(f"{'fillfactor':>12} {'held open':>10} {'drain s':>8} {'runs/s':>8} "
          f"{'HOT updates':>12} {'dead runs':>10} {'dead steps':>11}")  # fmt: skip
    for case in cases:
        r = await _drain(args.database_url, case, args.runs)
        label = "migration" if case.fillfactor is None else str(case.fillfactor)
        print(f"{label:>12} {'yes' if case.held_open else 'no':>10} {r.seconds:8.2f} "
              f"{args.runs / r.seconds:8.0f} {r.hot_share:12.0%} {r.dead_runs:10,} "
              f"{r.dead_steps:11,}", flush=True)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
