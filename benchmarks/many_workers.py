"""(h) many workers: 1, 2, 4 and 8 worker processes on one backlog.

The workers are started first and left idle (listening); then the backlog is started through
``start()`` as fast as the client goes (100 calls at a time), so every run's NOTIFY reaches
every worker while they drain it: a thundering herd shows as claims that found nothing. Each
worker counts its own claims from the inside (worker_app.py wraps ``store.claim``).
Throughput: runs / (first claim -> last end), database times, as in (a).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import bench_workflows
from phases import drain_window, per, runs_of, start_backlog, wait_finished
from records import ManyWorkers, WorkerCount
from target import Target, client
from workers import claim_counts, worker_processes


async def _count(
    target: Target, namespace: str, workers: int, runs: int, concurrency: int
) -> WorkerCount:
    async with client(target, namespace) as ow:
        async with worker_processes(target, namespace, concurrency, workers) as processes:
            await asyncio.gather(*(process.wait_ready(timeout=60) for process in processes))
            await asyncio.sleep(0.5)  # let them settle into their idle wait
            ids, start_seconds = await start_backlog(ow, bench_workflows.noop4, runs)
            await wait_finished(ow, ids, alive=processes)
        done = await runs_of(ow, ids)
    if sum(run.status == "completed" for run in done) != runs:
        raise RuntimeError(f"(h) {workers} workers: not every run completed")
    seconds = drain_window(done)
    counts = claim_counts(processes)
    cpu = [p.serving_cpu_seconds for p in processes]
    return WorkerCount(
        workers=workers,
        runs=runs,
        workflows_per_s=runs / seconds,
        seconds=seconds,
        start_seconds=start_seconds,
        claims=None if counts is None else counts[0],
        empty_claims=None if counts is None else counts[1],
        claimed=None if counts is None else counts[2],
        worker_cpu_ms_per_run=None if None in cpu else per(sum(c or 0.0 for c in cpu), runs),
    )


async def measure(
    target: Target,
    namespace: str,
    *,
    counts: Sequence[int] = (1, 2, 4, 8),
    runs: int = 2000,
    concurrency: int = 25,
) -> ManyWorkers:
    result = ManyWorkers(runs=runs, concurrency=concurrency)
    for workers in counts:
        result.counts.append(
            await _count(target, f"{namespace}-w{workers}", workers, runs, concurrency)
        )
    return result
