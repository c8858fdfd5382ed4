"""(a), (b), (c): ow-es measured through its public API, each with one worker process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import bench_workflows
import cpu
from records import Latency, Sequential, Throughput, percentile
from target import Target, client
from workers import application_name, claim_counts, claim_times, worker_process

import ow_es

TERMINAL = ("completed", "failed", "canceled")


async def runs_of(ow: ow_es.OpenWorkflow, ids: Sequence[str]) -> list[ow_es.WorkflowRun]:
    """The rows of these runs (one primary-key read each, 100 at a time)."""
    runs: list[ow_es.WorkflowRun] = []
    for offset in range(0, len(ids), 100):
        chunk = ids[offset : offset + 100]
        found = await asyncio.gather(*(ow.store.get_run(run_id) for run_id in chunk))
        runs += [run for run in found if run is not None]
    return runs


async def wait_finished(
    ow: ow_es.OpenWorkflow, ids: Sequence[str], alive: Sequence[object] = (), poll: float = 0.1
) -> None:
    """Until every one of these runs is terminal. A light poll, so as not to weigh on what is
    measured: one primary-key read of the last run started every ``poll`` seconds (runs end
    roughly in the order they were started); once it has ended, the rest are read (100 at a
    time) and the poll goes on with those still running. Its cost does not depend on how many
    other runs the tables hold. ``alive``: worker processes that must not exit meanwhile."""
    pending = list(ids)
    while pending:
        for worker in alive:
            if getattr(worker, "exited", False):
                raise RuntimeError(f"a worker exited early; see {getattr(worker, 'log', '?')}")
        last = await ow.store.get_run(pending[-1])
        if last is not None and last.status in TERMINAL:
            done = {run.id for run in await runs_of(ow, pending) if run.status in TERMINAL}
            pending = [run_id for run_id in pending if run_id not in done]
            if not pending:
                return
        await asyncio.sleep(poll)


async def start_backlog(
    ow: ow_es.OpenWorkflow, workflow: ow_es.Workflow[object], runs: int, chunk: int = 100
) -> tuple[list[str], float]:
    """Start ``runs`` runs (``chunk`` concurrent start() calls at a time): their ids, seconds."""
    began = time.perf_counter()
    ids: list[str] = []
    for offset in range(0, runs, chunk):
        size = min(chunk, runs - offset)
        handles = await asyncio.gather(*(ow.start(workflow) for _ in range(size)))
        ids += [handle.run_id for handle in handles]
    return ids, time.perf_counter() - began


def drain_window(runs: Sequence[ow_es.WorkflowRun]) -> float:
    """Seconds from the first claim to the last end, timed by the database."""
    first_claim = min(run.started_at for run in runs if run.started_at is not None)
    last_end = max(run.finished_at for run in runs if run.finished_at is not None)
    return (last_end - first_claim).total_seconds()


# -- (a) throughput ------------------------------------------------------------------------------


async def throughput(
    target: Target,
    namespace: str,
    *,
    runs: int = 1000,
    concurrency: int = 100,
) -> Throughput:
    workflow = bench_workflows.noop4
    async with client(target, namespace) as ow:
        ids, start_seconds = await start_backlog(ow, workflow, runs)
        async with worker_process(target, namespace, concurrency) as worker:
            await wait_finished(ow, ids, alive=[worker])
            # the worker's backends were all born in this window: their whole CPU counts
            pg_cpu = await cpu.backend_cpu_seconds(target.url, application_name(namespace))
        done = await runs_of(ow, ids)
    completed = [run for run in done if run.status == "completed"]
    if len(completed) != runs:
        raise RuntimeError(f"{runs - len(completed)} of {runs} runs did not complete")
    seconds = drain_window(completed)
    last_end = max(run.finished_at for run in completed if run.finished_at is not None)
    counts = claim_counts([worker])
    return Throughput(
        runs=runs,
        steps_per_run=bench_workflows.NOOP_STEPS,
        worker_concurrency=concurrency,
        completed=len(completed),
        start_seconds=start_seconds,
        starts_per_s=runs / start_seconds,
        seconds=seconds,
        workflows_per_s=runs / seconds,
        steps_per_s=runs * bench_workflows.NOOP_STEPS / seconds,
        wall_seconds_from_spawn=last_end.timestamp() - worker.spawned_at,  # one host, one clock
        worker_cpu_ms_per_run=per(worker.serving_cpu_seconds, runs),
        postgres_cpu_ms_per_run=per(pg_cpu, runs),
        claims_per_run=None if counts is None else counts[0] / runs,
        empty_claims_per_run=None if counts is None else counts[1] / runs,
    )


# -- (b) latency ---------------------------------------------------------------------------------


@dataclass
class _Sample:
    enqueued: float  # time.time() just before start()
    returned: float  # time.time() when start() returned
    handle: ow_es.RunHandle


async def latency(
    target: Target,
    namespace: str,
    *,
    runs: int = 200,
    rate: float = 20.0,
    concurrency: int = 10,
) -> Latency:
    """Enqueue -> first step at a steady pace, on an idle worker process; the p50 split into
    its parts by the client's timers, the worker's (its claim calls, see worker_app.py) and
    the database's (the run_created and run_claimed events' created_at)."""
    workflow = bench_workflows.first_step_clock
    async with client(target, namespace) as ow:
        async with worker_process(target, namespace, concurrency) as worker:
            await worker.wait_ready()
            await asyncio.sleep(0.5)  # let the worker settle into its idle wait
            samples = await paced_starts(ow, workflow, runs, rate)
            outputs = await asyncio.gather(*(s.handle.result(timeout=60) for s in samples))
        histories = await asyncio.gather(*(ow.history(s.handle.run_id) for s in samples))
    first_step = [(out - s.enqueued) * 1000 for out, s in zip(outputs, samples, strict=True)]
    claimed = claim_times([worker])
    parts: dict[str, list[float]] = {name: [] for name in LATENCY_PARTS}
    for sample, history, began in zip(samples, histories, outputs, strict=True):
        times = {event.type: event.created_at.timestamp() for event in reversed(history)}
        parts["to_created"].append((times["run_created"] - sample.enqueued) * 1000)
        parts["to_claim"].append((times["run_claimed"] - sample.enqueued) * 1000)
        parts["start_call"].append((sample.returned - sample.enqueued) * 1000)
        call = claimed.get(sample.handle.run_id)
        if call is not None:
            parts["wake"].append((call[0] - sample.returned) * 1000)
            parts["claim"].append((call[1] - call[0]) * 1000)
            parts["claim_to_step"].append((began - call[1]) * 1000)
    p50 = {name: percentile(values, 50) if values else None for name, values in parts.items()}
    return Latency(
        runs=runs,
        rate_per_s=rate,
        worker_concurrency=concurrency,
        p50_ms=percentile(first_step, 50),
        p99_ms=percentile(first_step, 99),
        max_ms=max(first_step),
        start_call_p50_ms=percentile(parts["start_call"], 50),
        to_claim_p50_ms=percentile(parts["to_claim"], 50),
        to_claim_p99_ms=percentile(parts["to_claim"], 99),
        to_created_p50_ms=p50["to_created"],
        wake_p50_ms=p50["wake"],
        claim_p50_ms=p50["claim"],
        claim_to_step_p50_ms=p50["claim_to_step"],
    )


LATENCY_PARTS = ("to_created", "to_claim", "start_call", "wake", "claim", "claim_to_step")


async def paced_starts(
    ow: ow_es.OpenWorkflow, workflow: ow_es.Workflow[object], runs: int, rate: float
) -> list[_Sample]:
    """One start() every 1/rate seconds on a fixed schedule (no drift)."""
    samples = []
    began = time.perf_counter()
    for index in range(runs):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        enqueued = time.time()
        handle = await ow.start(workflow)
        samples.append(_Sample(enqueued, time.time(), handle))
    return samples


# -- (c) sequential steps ------------------------------------------------------------------------


async def sequential(
    target: Target, namespace: str, *, steps: int = 1000, concurrency: int = 10
) -> Sequential:
    async with client(target, namespace) as ow:
        async with worker_process(target, namespace, concurrency) as worker:
            await worker.wait_ready()
            app = application_name(namespace)
            pg_before = await cpu.backend_cpu_seconds(target.url, app)
            began = time.perf_counter()
            handle = await ow.start(bench_workflows.sequential, steps)
            result = await handle.result(timeout=600)
            client_seconds = time.perf_counter() - began
            pg_after = await cpu.backend_cpu_seconds(target.url, app)
            pg_cpu = cpu.difference(pg_after, pg_before)
        run = await handle.status()
    if result != steps or run.started_at is None or run.finished_at is None:
        raise RuntimeError(f"the sequential run ended oddly: {run.status} {result!r}")
    run_seconds = (run.finished_at - run.started_at).total_seconds()
    return Sequential(
        steps=steps,
        worker_concurrency=concurrency,
        run_seconds=run_seconds,
        ms_per_step=run_seconds * 1000 / steps,
        client_seconds=client_seconds,
        client_ms_per_step=client_seconds * 1000 / steps,
        worker_cpu_ms_per_step=per(worker.serving_cpu_seconds, steps),
        postgres_cpu_ms_per_step=per(pg_cpu, steps),
    )


def per(seconds: float | None, count: int) -> float | None:
    """Milliseconds per item, when the CPU time is known."""
    return None if seconds is None else round(seconds * 1000 / count, 4)
