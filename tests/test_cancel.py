"""Cancel: idempotent on canceled runs, refused on finished ones, a running run dropped by its
worker (its step stopped too), a sleeping run kept asleep, and the edges (pending, parked,
unknown, resume after cancel)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import ow_es
from tests.support.runs import event_types, parked
from tests.support.waiting import eventually
from tests.support.workers import running_worker


async def test_cancel_is_idempotent_on_canceled_runs(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start("nobody-serves-this", None)
    await handle.cancel()
    await handle.cancel()
    await ow.cancel(handle.run_id)
    run = await handle.status()
    assert run.status == "canceled"
    assert run.finished_at is not None
    types = await event_types(ow, handle.run_id)
    assert types == ["run_created", "run_canceled"]


async def test_cancel_of_finished_runs_is_an_invalid_transition(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="finishes")
    async def finishes(ctx: ow_es.Context, fail: bool) -> str:
        if fail:
            raise RuntimeError("failing on purpose")
        return "fine"

    await ow.connect()
    async with running_worker(ow):
        completed = await finishes.start(False)
        failed = await finishes.start(True)
        assert await completed.result(timeout=15) == "fine"
        with pytest.raises(ow_es.WorkflowFailed):
            await failed.result(timeout=15)
    for handle, status in ((completed, "completed"), (failed, "failed")):
        before = await ow.history(handle.run_id)
        with pytest.raises(ow_es.InvalidTransition):
            await handle.cancel()
        assert (await handle.status()).status == status
        assert await ow.history(handle.run_id) == before


async def test_cancel_of_a_running_run_makes_the_worker_drop_it(ow: ow_es.OpenWorkflow) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    after: list[int] = []

    @ow.workflow(name="cancel-me")
    async def cancel_me(ctx: ow_es.Context) -> str:
        async def block() -> str:
            entered.set()
            await release.wait()
            return "late"

        await ctx.step.run("block", block)

        async def later() -> int:
            after.append(1)
            return 1

        await ctx.step.run("later", later)
        return "finished"

    @ow.workflow(name="next-one")
    async def next_one(ctx: ow_es.Context) -> str:
        return "next"

    await ow.connect()
    async with running_worker(ow, concurrency=1, lease="2s") as worker:
        handle = await cancel_me.start()
        await asyncio.wait_for(entered.wait(), 15)
        running = await handle.status()
        assert running.status == "running" and running.worker_id == worker.worker_id
        await handle.cancel()
        release.set()  # the step returns: the worker tries to record it

        async def dropped() -> bool:
            return worker.busy_slots == 0

        await eventually(dropped, timeout=10)
        # The freed slot serves the next run.
        assert await (await next_one.start()).result(timeout=15) == "next"

    with pytest.raises(ow_es.WorkflowCanceled):
        await handle.result(timeout=1)
    events = await ow.history(handle.run_id)
    types = [e.type for e in events]
    assert "run_canceled" in types
    assert types[-1] == "run_canceled", f"the worker wrote after the cancel: {types}"
    assert after == []
    run = await handle.status()
    assert run.status == "canceled"
    assert run.worker_id is None and run.lease_until is None


async def _cancel_a_stuck_step(ow: ow_es.OpenWorkflow, *, after_step_started: bool) -> None:
    entered = asyncio.Event()
    outcome: list[str] = []

    @ow.workflow(name="stuck")
    async def stuck(ctx: ow_es.Context) -> str:
        async def forever() -> str:
            entered.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
            outcome.append("finished")
            return "never"

        return await ctx.step.run("forever", forever)

    await ow.connect()
    async with running_worker(ow, concurrency=1, lease="900ms") as worker:
        handle = await stuck.start()
        await asyncio.wait_for(entered.wait(), 15)
        if after_step_started:

            async def recorded() -> bool:
                return "step_started" in await event_types(ow, handle.run_id)

            await eventually(recorded, timeout=5)
        await handle.cancel()

        async def dropped() -> bool:
            return worker.busy_slots == 0

        await eventually(dropped, timeout=5)

        async def step_cancelled() -> bool:
            return bool(outcome)

        with contextlib.suppress(AssertionError):  # checked just below
            await eventually(step_cancelled, timeout=1.5)
    assert outcome == ["cancelled"], "the dropped run's step is still running"
    types = await event_types(ow, handle.run_id)
    assert types[-1] == "run_canceled"


async def test_cancel_drops_a_run_whose_step_never_returns(ow: ow_es.OpenWorkflow) -> None:
    """Nothing to write, so the worker learns of the cancel from its heartbeat and stops
    the step."""
    await _cancel_a_stuck_step(ow, after_step_started=True)


async def test_cancel_early_in_a_step_stops_the_step_too(ow: ow_es.OpenWorkflow) -> None:
    """Canceled within the step's first 50 ms: the worker learns it when recording
    step_started is refused; the step must be stopped as well, not left running."""
    await _cancel_a_stuck_step(ow, after_step_started=False)


async def test_cancel_of_a_sleeping_run_keeps_it_asleep_forever(ow: ow_es.OpenWorkflow) -> None:
    woke: list[int] = []

    @ow.workflow(name="canceled-sleeper")
    async def canceled_sleeper(ctx: ow_es.Context) -> None:
        await ctx.step.sleep("nap", "300ms")
        woke.append(1)

    await ow.connect()
    async with running_worker(ow):
        handle = await canceled_sleeper.start()

        async def is_parked() -> bool:
            return (await handle.status()).waiting_for is not None

        await eventually(is_parked, timeout=10)
        await handle.cancel()
        run = await handle.status()
        assert run.status == "canceled"
        assert run.waiting_for is None and run.available_at is None
        await asyncio.sleep(0.6)  # past the wake time
    assert woke == []
    types = await event_types(ow, handle.run_id)
    assert types[-1] == "run_canceled"
    assert types.count("run_claimed") == 1


async def test_cancel_edges(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="parks")
    async def parks(ctx: ow_es.Context) -> Any:
        return await ctx.step.wait_for_signal("cancel-me", timeout="1m")

    @ow.workflow(name="ends")
    async def ends(ctx: ow_es.Context, fail: bool) -> str:
        if fail:
            raise RuntimeError("no")
        return "fine"

    await ow.connect()
    pending = await parks.start()
    await pending.cancel()  # never claimed: pending -> canceled
    await pending.cancel()
    assert (await pending.status()).status == "canceled"
    async with running_worker(ow, concurrency=3):
        parked_run = await parks.start()
        await eventually(lambda: parked(ow, parked_run.run_id, "signal", name="cancel-me"))
        await parked_run.cancel()
        assert await ow.send_signal("cancel-me", 1) == []
        done = await ends.start(False)
        failed = await ends.start(True)
        await done.result(timeout=10)
        with pytest.raises(ow_es.WorkflowFailed):
            await failed.result(timeout=10)
    for handle in (done, failed):
        with pytest.raises(ow_es.InvalidTransition):
            await handle.cancel()
        with pytest.raises(ow_es.InvalidTransition):
            await handle.cancel(cascade=False)
    with pytest.raises(ow_es.RunNotFound):
        await ow.cancel("no-such-run")
    with pytest.raises(ow_es.InvalidTransition):
        await ow.resume(parked_run.run_id)  # canceled runs do not resume
    assert (await event_types(ow, parked_run.run_id))[-1] == "run_canceled"
    assert (await event_types(ow, pending.run_id)).count("run_canceled") == 1


async def test_a_run_that_is_canceled_or_fails_closes_its_open_step_attempts(
    ow: ow_es.OpenWorkflow,
) -> None:
    """No attempt of an ended run stays ``running``: a canceled run closes its sleep, signal
    wait and child steps; a run failed by its deadline while asleep closes its sleep. Each is
    recorded as an abandoned failure (type ``RunEnded``) in the run's own log."""

    @ow.workflow(name="kid")
    async def kid(ctx: ow_es.Context) -> None:
        await ctx.step.sleep("kid-nap", "1h")

    @ow.workflow(name="many-waits")
    async def many_waits(ctx: ow_es.Context) -> None:
        await asyncio.gather(
            ctx.step.sleep("nap", "1h"),
            ctx.step.wait_for_signal("go"),
            ctx.step.run_workflow(kid, None),
        )

    @ow.workflow(name="sleeper")
    async def sleeper(ctx: ow_es.Context) -> None:
        await ctx.step.sleep("nap", "1h")

    await ow.connect()
    async with running_worker(ow):
        waiting = await many_waits.start()
        doomed = await sleeper.start(deadline_at="1s")
        await eventually(lambda: parked(ow, waiting.run_id, "sleep"), timeout=10)
        await waiting.cancel()
        with pytest.raises(ow_es.WorkflowFailed):
            await doomed.result(timeout=15)
    for handle, ending in ((waiting, "canceled"), (doomed, "failed")):
        rows = await ow.store.step_attempts(handle.run_id)
        assert rows and all(r.status != "running" for r in rows), rows
        closed = [r for r in rows if r.error is not None and r.error["type"] == "RunEnded"]
        assert closed and all(ending in r.error["message"] for r in closed if r.error), rows
        failures = [e for e in await ow.history(handle.run_id) if e.type == "step_failed"]
        assert failures and all(e.data["abandoned"] for e in failures)
    kinds = {r.kind for r in await ow.store.step_attempts(waiting.run_id)}
    assert kinds == {"sleep", "signal_wait", "workflow"}
    (child,) = await ow.store.list_children(waiting.run_id)
    assert child.status == "canceled"
    assert all(r.status != "running" for r in await ow.store.step_attempts(child.id))
