"""Graceful stop: a stopped worker finishes what it can within its stop timeout and releases
the rest at once, so another worker completes them long before their lease would run out;
in the test's loop and as a real ``ow-es worker`` process getting SIGTERM (one of its runs
stuck in a sync step's thread, which the process does not wait for)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import pytest

import ow_es
from tests.support.auditors import (
    audit_attempts,
    audit_executions,
    audit_log,
    claims_of,
    describe,
    pid_of,
    read_executions,
    statuses,
)
from tests.support.fleet import Fleet
from tests.support.processes import Processes
from tests.support.waiting import eventually
from tests.support.workers import running_worker


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


async def test_cancelling_the_worker_task_hands_every_run_back_at_once(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Cancelling the task running ``run()`` (as an embedding app does at shutdown) does not
    wait out the stop timeout: async steps are cancelled, a sync step is left to its thread,
    and each run is released at once; the thread's late result is fenced out."""
    in_async, in_sync = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    thread_may_end = threading.Event()

    @ow.workflow(name="async-long")
    async def async_long(ctx: ow_es.Context) -> None:
        async def wait() -> None:
            in_async.set()
            await asyncio.sleep(60)

        await ctx.step.run("wait", wait)

    @ow.workflow(name="sync-long")
    async def sync_long(ctx: ow_es.Context) -> str:
        def block() -> str:
            loop.call_soon_threadsafe(in_sync.set)
            thread_may_end.wait(30)
            return "late"

        return await ctx.step.run("block", block)

    await ow.connect()
    handles = [await async_long.start(), await sync_long.start()]
    worker = ow.worker(lease="30s", stop_timeout="30s", poll_interval="200ms")
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(asyncio.gather(in_async.wait(), in_sync.wait()), 15)
    cancelled_at = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    took = loop.time() - cancelled_at
    try:
        assert took < 5, took  # not the 30 s stop timeout
        for handle in handles:

            async def released(run_id: str = handle.run_id) -> bool:
                return (await ow.history(run_id))[-1].type == "run_released"

            await eventually(released, 10, "the run was handed back")
            run = await handle.status()
            assert run.worker_id is None and run.lease_until is None
    finally:
        thread_may_end.set()
    await asyncio.sleep(0.3)  # the thread returns; nothing of it may be written
    events = await ow.history(handles[1].run_id)
    assert events[-1].type == "run_released"
    assert not any(e.type == "step_completed" for e in events)


async def test_a_busy_worker_still_fails_runs_past_their_deadline(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Every slot is busy, yet a run whose deadline passes fails on time (it is not left
    pending until a slot frees)."""
    release = asyncio.Event()

    @ow.workflow(name="hog")
    async def hog(ctx: ow_es.Context) -> None:
        async def hold() -> None:
            await release.wait()

        await ctx.step.run("hold", hold)

    @ow.workflow(name="urgent")
    async def urgent(ctx: ow_es.Context) -> str:
        return "done"

    await ow.connect()
    async with running_worker(ow, concurrency=1, poll_interval="200ms") as worker:
        busy = await hog.start()
        await eventually(lambda: worker.busy_slots == 1, 10, "the only slot is taken")
        late = await urgent.start(deadline_at="500ms")
        try:
            with pytest.raises(ow_es.WorkflowFailed) as info:
                await late.result(timeout=10)
            assert worker.busy_slots == 1  # the slot never freed meanwhile
        finally:
            release.set()
        await busy.result(timeout=10)
    assert info.value.error_type == "DeadlineExceeded"


async def test_a_worker_that_fills_up_again_and_again_checks_deadlines_once_a_poll(
    ow: ow_es.OpenWorkflow,
) -> None:
    """The overdue check a full worker makes is a transaction: a worker draining a backlog
    fills its slots after every run, and must not pay one each time."""

    @ow.workflow(name="quick")
    async def quick(ctx: ow_es.Context) -> None:
        async def nothing() -> None:
            return None

        await ctx.step.run("nothing", nothing)

    await ow.connect()
    handles = [await quick.start() for _ in range(40)]
    checks = 0
    real = ow.store.fail_overdue

    async def counted(*args: Any, **kwargs: Any) -> int:
        nonlocal checks
        checks += 1
        return await real(*args, **kwargs)

    ow.store.fail_overdue = counted  # type: ignore[method-assign]
    async with running_worker(ow, concurrency=1, poll_interval="10s"):
        for handle in handles:
            await handle.result(timeout=30)
    assert checks <= 2, f"{checks} overdue checks while draining 40 runs in one poll interval"


@pytest.mark.slow
async def test_a_second_sigterm_stops_the_cli_worker_at_once(
    make_client: Any, db: dict[str, Any], processes: Processes
) -> None:
    """``ow-es worker``: the first SIGTERM starts a graceful stop (a 30 s stop timeout here);
    a second one stops at once, handing the run stuck in a sync step back."""
    ow = await make_client()
    await ow.connect()
    fleet = Fleet(db, processes)
    try:
        gated = {"CHAOS_GATED": "1"}
        worker = fleet.spawn(concurrency=2, lease="30s", stop_timeout="30", env=gated)
        await fleet.ready(worker)
        (fleet.state / "open-a-1").touch()
        handle = await ow.start("relay", 1)  # run 1 holds step b in a sync step's thread

        async def in_b() -> bool:
            events = await ow.history(handle.run_id)
            return any(e.type == "step_started" and e.data["step_name"] == "b" for e in events)

        await eventually(in_b, 20, "the run is in its sync step b")
        loop = asyncio.get_running_loop()
        signalled_at = loop.time()
        worker.send(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert worker.alive()  # the graceful stop waits for the step
        worker.send(signal.SIGTERM)
        await eventually(lambda: not worker.alive(), 10, "the worker exited at the second signal")
        assert loop.time() - signalled_at < 10, worker.text()
    finally:
        fleet.stop_all()
    events = await ow.history(handle.run_id)
    assert events[-1].type == "run_released", describe(events)


# -- a busy worker process gets SIGTERM ----------------------------------------------------------

STOP_TIMEOUT = 1.5


@pytest.mark.slow
async def test_sigterm_finishes_or_releases_in_flight_runs_for_another_worker(
    make_client: Any, db: dict[str, Any], processes: Processes
) -> None:
    ow = await make_client()
    await ow.connect()
    fleet = Fleet(db, processes)
    runs = range(4)  # run 1 holds its "b" in a sync step (a thread that cannot be stopped)
    for n in runs:
        (fleet.state / f"open-a-{n}").touch()
    try:
        first = fleet.spawn(
            concurrency=4,
            lease="30s",
            heartbeat="1s",
            stop_timeout=str(STOP_TIMEOUT),
            env={"CHAOS_GATED": "1"},
        )
        await fleet.ready(first)
        handles = [await ow.start("relay", n) for n in runs]

        async def all_in_b() -> bool:
            for h in handles:
                events = await ow.history(h.run_id)
                if not any(e.type == "step_started" and e.data["step_name"] == "b" for e in events):
                    return False
            return True

        await eventually(all_in_b, 20, "every run is in step b in the first worker")
        second = fleet.spawn(concurrency=4, lease="30s", heartbeat="1s")
        await fleet.ready(second)
        stopped_at = time.monotonic()
        first.send(signal.SIGTERM)
        for n in (0, 2):  # these can finish within the stop timeout
            (fleet.state / f"open-b-{n}").touch()

        async def all_completed() -> bool:
            return (await statuses(ow))["completed"] == len(runs)

        await eventually(all_completed, 25, "every run completed")
        completed_after = time.monotonic() - stopped_at
        await eventually(lambda: not first.alive(), 10, "the stopped worker exited")
        exited_after = time.monotonic() - stopped_at
    finally:
        fleet.stop_all()
    assert first.popen.returncode == 0, first.text()
    # Far sooner than the 30 s lease: the released runs were handed over, not abandoned.
    assert completed_after < STOP_TIMEOUT + 8, (completed_after, fleet.logs())
    # The stuck thread does not hold the process (the CLI leaves without joining it).
    assert exited_after < STOP_TIMEOUT + 8, (exited_after, first.text())

    for n, handle in zip(runs, handles, strict=True):
        events = await ow.history(handle.run_id)
        rows = await ow.store.step_attempts(handle.run_id)
        executions = read_executions(fleet.state, handle.run_id)
        where = f"run {n}:\n{describe(events)}"
        assert audit_log(events) == [], where
        assert audit_attempts(events, rows) == [], where
        assert audit_executions(events, executions, {first.pid}) == [], where
        assert (await handle.status()).output == [n, 2 * n, 3 * n], where
        claimants = [pid_of(c.data["worker_id"]) for c in claims_of(events)]
        released = [e for e in events if e.type == "run_released"]
        ran = {step: [pid for s, pid, _ in executions if s == step] for step in "abc"}
        if n % 2 == 0:  # finished by the stopping worker within its stop timeout
            assert claimants == [first.pid] and not released, where
            assert ran == {"a": [first.pid], "b": [first.pid], "c": [first.pid]}, where
        else:  # released by the stopping worker, completed by the other one
            assert claimants == [first.pid, second.pid], where
            assert len(released) == 1 and pid_of(released[0].data["worker_id"]) == first.pid
            takeover = claims_of(events)[1]
            assert released[0].seq < takeover.seq, where
            handover = (takeover.created_at - released[0].created_at).total_seconds()
            assert handover < 5, f"the released run waited {handover:.1f}s\n{where}"
            assert ran == {"a": [first.pid], "b": [first.pid, second.pid], "c": [second.pid]}, where
