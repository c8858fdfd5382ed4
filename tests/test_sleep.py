"""Durable sleep: it parks the run, frees the slot, survives a crash, runs nothing twice; with
parallel waits the run shows the one due first."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import ow_es
from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.store import Appended, AppendRequest
from tests.support.runs import event_types, parked
from tests.support.waiting import eventually
from tests.support.workers import running_worker


async def test_sleep_parks_and_frees_the_slot(ow: ow_es.OpenWorkflow) -> None:
    calls = {"before": 0, "after": 0, "quick": 0}

    @ow.workflow(name="sleeper")
    async def sleeper(ctx: ow_es.Context) -> str:
        async def before() -> str:
            calls["before"] += 1
            return "b"

        async def after() -> str:
            calls["after"] += 1
            return "a"

        first = await ctx.step.run("before", before)
        await ctx.step.sleep("nap", "1500ms")
        second = await ctx.step.run("after", after)
        return first + second

    @ow.workflow(name="quick")
    async def quick(ctx: ow_es.Context) -> str:
        async def work() -> str:
            calls["quick"] += 1
            return "quick"

        return await ctx.step.run("work", work)

    await ow.connect()
    async with running_worker(ow, concurrency=1) as worker:
        a = await sleeper.start()

        async def is_parked() -> bool:
            run = await a.status()
            return run.waiting_for is not None and run.waiting_for.get("kind") == "sleep"

        await eventually(is_parked, timeout=10)
        run = await a.status()
        assert run.status == "running"
        assert run.worker_id is None and run.lease_until is None
        assert run.waiting_for is not None and run.waiting_for["step"] == "nap"
        assert run.available_at is not None and run.available_at > utcnow()

        async def slot_free() -> bool:
            return worker.busy_slots == 0

        await eventually(slot_free, timeout=5)
        b = await quick.start()
        assert await b.result(timeout=1.2) == "quick"
        assert (await a.status()).status == "running"  # still asleep
        assert await a.result(timeout=10) == "ba"

    a_run, b_run = await a.status(), await b.status()
    assert b_run.finished_at is not None and a_run.finished_at is not None
    assert b_run.finished_at < a_run.finished_at
    assert calls == {"before": 1, "after": 1, "quick": 1}

    events = await ow.history(a.run_id)
    sleep_started = [e for e in events if e.type == "step_started" and e.data["kind"] == "sleep"]
    assert len(sleep_started) == 1
    until = datetime.fromisoformat(sleep_started[0].data["input"]["until"])
    assert until - sleep_started[0].created_at >= timedelta(milliseconds=1400)
    assert a_run.finished_at >= until
    types = [e.type for e in events]
    assert types.count("run_sleeping") == 1
    assert types.count("run_claimed") == 2
    completed = [e.data["step_name"] for e in events if e.type == "step_completed"]
    assert sorted(completed) == ["after", "before", "nap"]
    steps = await ow.store.step_attempts(a.run_id)
    nap = [s for s in steps if s.step_name == "nap"]
    assert len(nap) == 1 and nap[0].kind == "sleep" and nap[0].status == "completed"


async def test_sleep_until_a_past_time_does_not_park(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="no-nap")
    async def no_nap(ctx: ow_es.Context) -> str:
        await ctx.step.sleep_until("past", utcnow() - timedelta(seconds=5))
        await ctx.step.sleep("zero", 0)
        return "awake"

    await ow.connect()
    async with running_worker(ow):
        handle = await no_nap.start()
        assert await handle.result(timeout=10) == "awake"
    types = await event_types(ow, handle.run_id)
    assert "run_sleeping" not in types
    assert types.count("run_claimed") == 1


async def test_crash_between_sleep_recorded_and_parked_still_sleeps(
    ow: ow_es.OpenWorkflow,
) -> None:
    """An owner recorded the sleep (step_started of kind sleep) and its step before, then died
    before parking. The next owner sleeps until the *recorded* time and re-runs nothing."""
    calls: list[int] = []

    @ow.workflow(name="crashy-sleeper")
    async def crashy_sleeper(ctx: ow_es.Context) -> dict[str, object]:
        async def before() -> int:
            calls.append(1)
            return -1

        value = await ctx.step.run("before", before)
        await ctx.step.sleep("nap", "1h")  # the recorded wake time wins over a new one
        return {"value": value}

    await ow.connect()
    handle = await crashy_sleeper.start()
    (run,) = await ow.store.claim("ghost", [("crashy-sleeper", None)], 1, 0.3)
    until = utcnow() + timedelta(milliseconds=1200)
    (outcome,) = await ow.store.append(
        [
            AppendRequest(
                run_id=handle.run_id,
                claim_token=run.claim_token,
                events=[
                    ev.StepCompleted(
                        step_name="before",
                        kind="function",
                        attempt=1,
                        output=7,
                        started_at=utcnow(),
                        worker_id="ghost",
                    ),
                    ev.StepStarted(
                        step_name="nap",
                        kind="sleep",
                        attempt=1,
                        input={"until": until.isoformat()},
                        worker_id="ghost",
                    ),
                ],
            )
        ]
    )
    assert isinstance(outcome, Appended)
    # The ghost never parks; its lease (0.3 s) runs out.
    async with running_worker(ow, lease="5s") as worker:
        assert await handle.result(timeout=15) == {"value": 7}
    assert calls == []
    final = await handle.status()
    assert final.finished_at is not None and final.finished_at >= until
    events = await ow.history(handle.run_id)
    naps = [e for e in events if e.type == "step_started" and e.data["step_name"] == "nap"]
    assert len(naps) == 1
    sleeping = [e for e in events if e.type == "run_sleeping"]
    assert len(sleeping) == 1
    assert sleeping[0].data["worker_id"] == worker.worker_id
    assert datetime.fromisoformat(sleeping[0].data["until"]) == until
    nap_done = [e for e in events if e.type == "step_completed" and e.data["step_name"] == "nap"]
    assert len(nap_done) == 1 and nap_done[0].created_at >= until


async def test_many_sleepers_share_one_slot(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="napper")
    async def napper(ctx: ow_es.Context, i: int) -> int:
        await ctx.step.sleep("nap", "600ms")
        return i

    await ow.connect()
    async with running_worker(ow, concurrency=1):
        loop = asyncio.get_running_loop()
        started = loop.time()
        handles = [await napper.start(i) for i in range(5)]
        results = [await h.result(timeout=15) for h in handles]
        elapsed = loop.time() - started
    assert results == [0, 1, 2, 3, 4]
    # Five 0.6 s sleeps on one slot overlap: far less than 5 * 0.6 s.
    assert elapsed < 2.5


async def test_parallel_waits_show_the_one_due_first(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="two-waits")
    async def two_waits(ctx: ow_es.Context) -> Any:
        return await asyncio.gather(
            ctx.step.wait_for_signal("whenever"),  # never due by itself
            ctx.step.sleep("nap", "400ms"),
            ctx.step.wait_for_signal("soon", timeout="200ms"),
        )

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        handle = await two_waits.start()
        await eventually(lambda: parked(ow, handle.run_id, "signal", name="soon"))
        # After the short wait times out (its step completes with None), the sleep is the one
        # due first. A replay must not forget the sibling waits it does not reach first.
        await eventually(lambda: parked(ow, handle.run_id, "sleep", step="nap"), timeout=3)
        wf = (await handle.status()).waiting_for
        assert wf is not None and "until" in wf
        # A signal for the wait that is not the one shown is still delivered.
        assert await ow.send_signal("whenever", "w") == [handle.run_id]
        assert await handle.result(timeout=15) == ["w", None, None]
