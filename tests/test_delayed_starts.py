"""Delayed starts (``available_at``): not before their time, and on time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

import ow_es
from ow_es import events as ev
from ow_es.store.port import AppendRequest, WorkflowKey
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


async def test_a_claim_that_leaves_slots_free_reads_the_next_timer_too(
    ow: ow_es.OpenWorkflow,
) -> None:
    """PostgreSQL's one-statement claim returns the next timer when it leaves slots free, the
    same one ``next_wake_at`` reads: the first lease end of a served workflow (a lease of
    another workflow does not count), else the next delayed start. A claim that fills its
    slots does not read it."""
    await ow.connect()
    keys = [("later", None)]
    later = await ow.start("later", None, available_at="1h")
    await ow.start("later", None)
    await ow.start("other", None)
    (other,) = await ow.store.claim("w", [("other", None)], 1, 5)  # ends first, not served
    full = await ow.store.claim_ready("w", keys, 1, 30)
    assert len(full.runs) == 1 and not full.timers_read
    (held,) = full.runs

    async def next_timer() -> datetime | None:
        left = await ow.store.claim_ready("w", keys, 10, 30)
        assert left.runs == []
        assert left.timers_read == (ow.store.dialect == "postgres")
        expected = await ow.store.next_wake_at(keys)
        if left.timers_read:
            assert left.next_wake_at == expected
        return expected

    assert other.lease_until is not None and held.lease_until is not None
    assert other.lease_until < held.lease_until
    assert await next_timer() == held.lease_until
    done = AppendRequest(run_id=held.id, claim_token=held.claim_token, events=[ev.RunCompleted()])
    await ow.store.append([done])  # its lease end is no timer left to wait for
    assert await next_timer() == (await later.status()).available_at


async def test_an_idle_worker_on_postgres_takes_its_timer_from_the_claim(
    ow: ow_es.OpenWorkflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the idle worker wakes for a delayed run by the timer its claim returned:
    no read of its own after a claim (which would hold back the runs just claimed). A run
    that ends may leave a timer: the run here stays until the reads are counted."""
    began = asyncio.Event()
    release = asyncio.Event()

    @ow.workflow(name="delayed")
    async def delayed(ctx: ow_es.Context) -> str:
        began.set()
        await release.wait()
        return "on time"

    await ow.connect()
    reads = 0
    read_timer = ow.store.next_wake_at

    async def counted(workflows: Sequence[WorkflowKey]) -> datetime | None:
        nonlocal reads
        reads += 1
        return await read_timer(workflows)

    monkeypatch.setattr(ow.store, "next_wake_at", counted)
    async with running_worker(ow, poll_interval="5s"):
        await asyncio.sleep(0.3)  # idle, after a claim that found nothing
        handle = await delayed.start(available_at="300ms")
        await asyncio.wait_for(began.wait(), timeout=2.5)  # by its timer, not the poll
        timer_reads = reads
        release.set()
        assert await handle.result(timeout=15) == "on time"
    if ow.store.dialect == "postgres":
        assert timer_reads == 0
    else:  # SQLite's claim reads no timer: the worker asks for it
        assert timer_reads > 0
