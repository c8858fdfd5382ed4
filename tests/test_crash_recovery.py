"""Crash recovery with real processes: a worker is SIGKILLed mid-step, another finishes the
run after the lease expires, and nothing that completed before the kill runs again."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import ow_es
from tests.support.apps import crash
from tests.support.cli import db_args
from tests.support.processes import Processes
from tests.support.waiting import eventually
from tests.support.workers import running_worker


async def test_sigkilled_worker_process_is_recovered(
    ow: ow_es.OpenWorkflow,
    db: dict[str, Any],
    tmp_path: Path,
    processes: Processes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("CRASH_STATE", str(state))  # for the rescuer in this process
    ow.register(crash.victim)  # the same definitions in this process, without blocking
    await ow.connect()
    handle = await ow.start(crash.victim)

    proc = processes.worker(
        "tests.support.apps.crash",
        *("-c", "4", "--lease", "2s", "--poll-interval", "100ms", *db_args(db)),
        env={"CRASH_STATE": str(state), "OW_TEST_BLOCK": "1"},
    )

    async def blocked() -> bool:
        assert proc.alive(), proc.text()
        return (state / "blocked").exists()

    await eventually(blocked, timeout=30, interval=0.05)
    dead_worker = (await proc.serving()).split()[2]  # "ow-es worker <id> serving ..."

    async def recorded() -> bool:
        done = {
            e.data["step_name"]
            for e in await ow.history(handle.run_id)
            if e.type == "step_completed"
        }
        return {"first", "part", "part:1"} <= done

    await eventually(recorded, timeout=10)
    before_kill = await handle.status()
    assert before_kill.status == "running"
    assert before_kill.worker_id == dead_worker
    proc.kill()
    assert proc.returncode == -signal.SIGKILL

    async with running_worker(ow, lease="2s", concurrency=2) as rescuer:
        result = await handle.result(timeout=30)
    assert result == {"first": 1, "parts": [0, 10, 20], "last": "last"}

    # Completed before the kill: run once. Interrupted: run again. After: run once.
    assert crash.count(state, "first") == 1
    assert crash.count(state, "part0") == 1
    assert crash.count(state, "part1") == 1
    assert crash.count(state, "part2") == 2
    assert crash.count(state, "last") == 1

    events = await ow.history(handle.run_id)
    claims = [e for e in events if e.type == "run_claimed"]
    assert [c.data["worker_id"] for c in claims] == [dead_worker, rescuer.worker_id]
    # The rescuer waited for the lease: no takeover while the dead worker still held it.
    assert before_kill.lease_until is not None
    assert claims[1].created_at >= before_kill.lease_until - timedelta(milliseconds=100)
    # One owner at a time: every worker-written event after the takeover is the rescuer's.
    takeover = claims[1].seq
    writers = {e.data.get("worker_id") for e in events if e.seq > takeover} - {None}
    assert writers == {rescuer.worker_id}
    steps = await ow.store.step_attempts(handle.run_id)
    assert {s.step_name for s in steps if s.status == "completed"} == {
        "first",
        "part",
        "part:1",
        "part:2",
        "last",
    }


async def test_stopped_worker_releases_its_run_for_another(ow: ow_es.OpenWorkflow) -> None:
    """A graceful stop that cannot finish in time hands the run back at once (no lease wait)."""
    entered = asyncio.Event()
    calls: list[str] = []

    @ow.workflow(name="handover")
    async def handover(ctx: ow_es.Context) -> str:
        async def done_before() -> str:
            calls.append("before")
            return "before"

        async def long_step() -> str:
            calls.append("long")
            if len([c for c in calls if c == "long"]) == 1:
                entered.set()
                await asyncio.sleep(30)
            return "long"

        await ctx.step.run("before", done_before)
        return await ctx.step.run("long", long_step)

    await ow.connect()
    handle = await handover.start()
    first = ow.worker(lease="30s", poll_interval="200ms")
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(entered.wait(), 15)
    await first.stop(timeout=0.1)
    await asyncio.wait_for(task, 10)
    types = [e.type for e in await ow.history(handle.run_id)]
    assert types[-1] == "run_released"
    run = await handle.status()
    assert run.status == "running" and run.worker_id is None and run.lease_until is None

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with running_worker(ow, lease="30s"):
        assert await handle.result(timeout=15) == "long"
    assert loop.time() - started < 10  # far less than the 30 s lease
    assert calls == ["before", "long", "long"]
