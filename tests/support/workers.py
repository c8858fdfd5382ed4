"""A worker in the test's own event loop (no process of its own): the runtime tests start
runs and let it execute them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import ow_es


@contextlib.asynccontextmanager
async def running_worker(client: ow_es.OpenWorkflow, **options: Any) -> AsyncIterator[ow_es.Worker]:
    """A worker running in the background of this test, stopped (and awaited) at exit."""
    options.setdefault("poll_interval", "200ms")
    async with serving(client.worker(**options)) as worker:
        yield worker


def slot_holder(client: ow_es.OpenWorkflow, gate: asyncio.Event, name: str = "hold") -> Any:
    """A workflow whose one step waits for ``gate``: each of its runs holds a worker slot
    until the gate is set, then returns "go"."""

    async def blocked() -> str:
        await gate.wait()
        return "go"

    @client.workflow(name=name)
    async def hold(ctx: ow_es.Context) -> str:
        return await ctx.step.run("blocked", blocked)

    return hold


@contextlib.asynccontextmanager
async def serving(worker: ow_es.Worker) -> AsyncIterator[ow_es.Worker]:
    """Run this worker in the background of this test; stop (and await) it at exit."""
    task = asyncio.create_task(worker.run())
    ready = asyncio.ensure_future(worker.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raise whatever stopped it
    assert ready in done, "worker did not become ready"
    try:
        yield worker
    finally:
        await worker.stop(timeout=5)
        await asyncio.wait_for(task, 30)
