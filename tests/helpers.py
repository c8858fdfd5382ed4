"""Small helpers for the behavioural suite."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import ow_es


@contextlib.asynccontextmanager
async def running_worker(client: ow_es.OpenWorkflow, **options: Any) -> AsyncIterator[ow_es.Worker]:
    """A worker running in the background of this test, stopped (and awaited) at exit."""
    options.setdefault("poll_interval", "200ms")
    worker = client.worker(**options)
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


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10, interval: float = 0.02
) -> None:
    """Wait until ``check()`` is true, failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(interval)


async def event_types(client: ow_es.OpenWorkflow, run_id: str) -> list[str]:
    return [event.type for event in await client.history(run_id)]
