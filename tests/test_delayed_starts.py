"""Delayed starts (``available_at``): not before their time, and on time."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import ow_es
from tests.support.runs import event_types
from tests.support.workers import running_worker


async def test_delayed_run_starts_on_time_without_waiting_for_the_poll(
    ow: ow_es.OpenWorkflow,
) -> None:
    """A run created while the worker idles, due in 300 ms, starts by its timer, not at the
    next fallback poll (5 s here)."""

    @ow.workflow(name="delayed")
    async def delayed(ctx: ow_es.Context) -> str:
        return "on time"

    await ow.connect()
    async with running_worker(ow, poll_interval="5s"):
        await asyncio.sleep(0.3)  # the worker is idle, waiting
        loop = asyncio.get_running_loop()
        started = loop.time()
        handle = await delayed.start(available_at="300ms")
        assert await handle.result(timeout=15) == "on time"
        elapsed = loop.time() - started
    run = await handle.status()
    assert run.started_at is not None
    assert run.started_at >= run.created_at + timedelta(milliseconds=290)
    assert elapsed < 2.5, f"a run due in 0.3 s started after {elapsed:.1f} s"


async def test_delayed_run_is_not_claimed_early(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start("later", None, available_at="1h")
    assert await ow.store.claim("w", [("later", None)], 10, 30) == []
    run = await handle.status()
    assert run.status == "pending"
    assert run.available_at is not None and run.available_at > run.created_at
    assert await event_types(ow, handle.run_id) == ["run_created"]
