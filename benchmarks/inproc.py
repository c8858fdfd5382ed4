"""(i) in-process: start() -> first step when the worker runs in the client's own process.

The worker is a task on the benchmark's own event loop and shares its client, so a start()
is handed to it (created already claimed by it: no NOTIFY, no poll, no claim): SQLite's fast
path (the issue's item 8 wants 2 ms p50 there). Paced as (b); the first step records
``time.time()`` when it starts.
"""

from __future__ import annotations

import asyncio

import bench_workflows
from phases import paced_starts
from records import InProcess, percentile
from target import Target

import ow_es


async def measure(
    target: Target, namespace: str, *, runs: int = 200, rate: float = 20.0, concurrency: int = 10
) -> InProcess:
    workflow = bench_workflows.first_step_clock
    ow = ow_es.OpenWorkflow(target.url, namespace=namespace, schema=target.schema)
    ow.register(workflow)
    async with ow:
        worker = ow.worker(concurrency=concurrency)
        serving = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.ready.wait(), timeout=30)
            await asyncio.sleep(0.5)  # let the worker settle into its idle wait
            samples = await paced_starts(ow, workflow, runs, rate)
            outputs = await asyncio.gather(*(s.handle.result(timeout=60) for s in samples))
        finally:
            await worker.stop(timeout=10)
            await serving
    latencies = [(out - s.enqueued) * 1000 for out, s in zip(outputs, samples, strict=True)]
    return InProcess(
        runs=runs,
        rate_per_s=rate,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies),
    )
