"""The worker registry: a worker records what it serves while it runs, so runs that no live
worker serves and runs held without progress can be found; a finished run is logged once."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import pytest

import ow_es
from ow_es.durations import utcnow
from tests.support.databases import ClientFactory
from tests.support.waiting import eventually
from tests.support.workers import running_worker


def _worker(worker_id: str) -> ow_es.WorkerInfo:
    """A registry row of a worker serving ``wf`` (written straight to the registry)."""
    return ow_es.WorkerInfo(
        id=worker_id, host="h", pid=1, workflows=[("wf", None)], concurrency=1, busy=0,
        started_at=utcnow(), heartbeat_at=utcnow(),
    )  # fmt: skip


async def test_a_running_worker_is_listed_with_what_it_serves_until_it_stops(
    ow: ow_es.OpenWorkflow,
) -> None:
    @ow.workflow(name="listed", version="3")
    async def listed(ctx: ow_es.Context) -> None:
        return None

    await ow.connect()
    assert await ow.workers() == []
    async with running_worker(ow, concurrency=4, worker_id="w-listed") as worker:
        (me,) = await ow.workers()
        assert me.id == worker.worker_id == "w-listed"
        assert me.workflows == [("listed", "3")]
        assert (me.host, me.pid, me.concurrency) == (socket.gethostname(), os.getpid(), 4)
        assert me.heartbeat_at <= utcnow()
    assert await ow.workers() == []  # it left the registry when it stopped


async def test_a_worker_that_stops_beating_is_no_longer_live(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    await ow.store.registry.register(_worker("w-gone"), ttl_seconds=0.2)
    assert [w.id for w in await ow.workers()] == ["w-gone"]
    await asyncio.sleep(0.4)
    assert await ow.workers() == []


async def test_a_heartbeat_cancelled_mid_write_does_not_keep_the_worker_listed(
    ow: ow_es.OpenWorkflow,
) -> None:
    """A stopping worker cancels its heartbeat, which may be waiting for its transaction to
    begin (SQLite: the driver's thread still opens it), then leaves the registry: the leave
    must still be written, not fail on a transaction left open."""
    await ow.connect()
    await ow.store.registry.register(_worker("w-leaving"), ttl_seconds=60)
    beat = asyncio.create_task(ow.store.registry.beat("w-leaving", busy=1))
    await asyncio.sleep(0)  # it is waiting on the driver now
    beat.cancel()
    await asyncio.gather(beat, return_exceptions=True)
    await ow.store.registry.forget("w-leaving")
    assert await ow.workers() == []
    await ow.start("wf", None)  # and the client still writes


async def test_ready_runs_no_live_worker_serves_are_reported(
    ow: ow_es.OpenWorkflow, make_client: ClientFactory
) -> None:
    """A run started by name for version "2" while only version "1" is served waits forever:
    the registry shows it, until a worker serving version "2" runs."""

    @ow.workflow(name="versioned", version="1")
    async def v1(ctx: ow_es.Context) -> str:
        return "v1"

    await ow.connect()
    producer = await make_client()
    await producer.connect()
    stranded = await producer.start("versioned", version="2")
    nobody = await producer.start("nobody-serves-this")
    async with running_worker(ow):
        assert await ow.store.registry.unserved_runs() == {
            ("versioned", "2"): 1,
            ("nobody-serves-this", None): 1,
        }
        v2_client = await make_client()

        @v2_client.workflow(name="versioned", version="2")
        async def v2(ctx: ow_es.Context) -> str:
            return "v2"

        await v2_client.connect()
        async with running_worker(v2_client):
            assert await stranded.result(timeout=15) == "v2"
            assert await ow.store.registry.unserved_runs() == {("nobody-serves-this", None): 1}
    assert (await nobody.status()).status == "pending"


async def test_runs_held_without_progress_are_reported(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start("held")
    (claimed,) = await ow.store.claim("w-hung", [("held", None)], 1, 300)
    assert await ow.store.registry.stuck_runs(600) == []  # not idle for that long
    await asyncio.sleep(0.05)
    (stuck,) = await ow.store.registry.stuck_runs(0.01)
    assert stuck.id == handle.run_id == claimed.id
    assert stuck.worker_id == "w-hung"


async def test_each_finished_run_is_logged_once_with_its_facts(
    ow: ow_es.OpenWorkflow, caplog: pytest.LogCaptureFixture
) -> None:
    @ow.workflow(name="logged")
    async def logged(ctx: ow_es.Context, fail: bool) -> str:
        if fail:
            raise ValueError("no")
        return "yes"

    await ow.connect()
    caplog.set_level(logging.INFO, logger="ow_es.worker")
    async with running_worker(ow):
        ok = await logged.start(False)
        bad = await logged.start(True)
        await ok.result(timeout=15)
        with pytest.raises(ow_es.WorkflowFailed):
            await bad.result(timeout=15)

        def ended() -> list[logging.LogRecord]:
            return [
                r for r in caplog.records if getattr(r, "run_id", None) in (ok.run_id, bad.run_id)
            ]

        await eventually(lambda: len(ended()) == 2, 5, "both runs logged")
    by_run = {r.__dict__["run_id"]: r for r in ended()}
    assert len(ended()) == 2
    assert by_run[ok.run_id].__dict__["status"] == "completed"
    assert by_run[bad.run_id].__dict__["status"] == "failed"
    for record in by_run.values():
        assert record.__dict__["workflow"] == "logged"
        assert record.__dict__["duration_ms"] >= 0
        assert record.__dict__["attempts"] == 1
        assert record.getMessage().startswith("run ")
