"""(h) many workers: 1, 2, 4 and 8 worker processes on one backlog, and on a trickle.

Each worker counts its own claims from the inside (worker_app.py wraps the store's claim), so
the claims that found nothing are counted exactly. Two shapes, each with fresh processes:

* a backlog: the workers are started and left idle (listening), then the backlog is started
  through ``start()`` as fast as the client goes (100 calls at a time) while they drain it.
  Throughput: runs / (first claim -> last end), database times, as in (a). Busy workers with
  every slot taken do not answer wake-ups, so this shape hides most of a herd;
* a trickle: runs started one at a time at a steady pace (as in (b)) on idle workers, so that
  every NOTIFY finds every worker free to answer it: a thundering herd shows here in full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import bench_workflows
from phases import drain_window, paced_starts, per, runs_of, start_backlog, wait_finished
from records import ManyWorkers, WorkerCount
from target import Target, client
from workers import WorkerProcess, claim_counts, worker_processes


async def _ready(processes: Sequence[WorkerProcess]) -> None:
    await asyncio.gather(*(process.wait_ready(timeout=60) for process in processes))
    await asyncio.sleep(0.5)  # let them settle into their idle wait


async def _backlog(
    target: Target, namespace: str, workers: int, runs: int, concurrency: int
) -> WorkerCount:
    async with client(target, namespace) as ow:
        async with worker_processes(target, namespace, concurrency, workers) as processes:
            await _ready(processes)
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


async def _trickle(
    target: Target, namespace: str, workers: int, runs: int, rate: float, concurrency: int
) -> tuple[int, int] | None:
    """(claims, empty claims) of ``workers`` idle workers while runs start at ``rate``/s."""
    async with (
        client(target, namespace) as ow,
        worker_processes(target, namespace, concurrency, workers) as processes,
    ):
        await _ready(processes)
        samples = await paced_starts(ow, bench_workflows.noop4, runs, rate)
        await wait_finished(ow, [s.handle.run_id for s in samples], alive=processes)
    counts = claim_counts(processes)
    return None if counts is None else (counts[0], counts[1])


async def measure(
    target: Target,
    namespace: str,
    *,
    counts: Sequence[int] = (1, 2, 4, 8),
    runs: int = 2000,
    concurrency: int = 25,
    trickle_runs: int = 100,
    rate: float = 20.0,
) -> ManyWorkers:
    result = ManyWorkers(runs=runs, concurrency=concurrency, trickle_runs=trickle_runs, rate=rate)
    for workers in counts:
        count = await _backlog(target, f"{namespace}-w{workers}", workers, runs, concurrency)
        trickle = await _trickle(
            target, f"{namespace}-t{workers}", workers, trickle_runs, rate, concurrency
        )
        if trickle is not None:
            count.trickle_claims, count.trickle_empty_claims = trickle
        result.counts.append(count)
    return result
