"""Child workflows: started once across replays, results back to the parent, cascades."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import ow_es
from tests.support.runs import event_types
from tests.support.waiting import eventually
from tests.support.workers import running_worker


async def test_child_result_and_failure_reach_the_parent(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="double")
    async def double(ctx: ow_es.Context, n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return await ctx.step.run("x2", lambda: n * 2)

    @ow.workflow(name="parent")
    async def parent(ctx: ow_es.Context, n: int) -> Any:
        value = await ctx.step.run_workflow(double, n)
        try:
            await ctx.step.run_workflow("double", -1, name="bad-child")
        except ow_es.StepFailed as exc:
            return {"value": value, "error": exc.error_type}
        return {"value": value, "error": None}

    await ow.connect()
    async with running_worker(ow, concurrency=4):
        handle = await parent.start(21)
        assert await handle.result(timeout=20) == {"value": 42, "error": "ValueError"}
    types = await event_types(ow, handle.run_id)
    assert types.count("child_started") == 2 and types.count("child_finished") == 2
    steps = {s.step_name: s for s in await ow.store.step_attempts(handle.run_id)}
    assert steps["child:double"].kind == "workflow" and steps["child:double"].output == 42
    child = await ow.store.get_run(steps["child:double"].child_run_id or "")
    assert child is not None and child.parent_run_id == handle.run_id


async def test_fan_out_of_300_children(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="leaf")
    async def leaf(ctx: ow_es.Context, n: int) -> int:
        return n

    @ow.workflow(name="fan")
    async def fan(ctx: ow_es.Context) -> int:
        results = await asyncio.gather(*(ctx.step.run_workflow(leaf, i) for i in range(300)))
        return sum(results)

    await ow.connect()
    async with running_worker(ow, concurrency=50):
        handle = await fan.start()
        assert await handle.result(timeout=120) == sum(range(300))
    children = await ow.store.list_children(handle.run_id)
    assert len(children) == 300 and all(c.status == "completed" for c in children)


async def test_cancel_cascades_to_children_and_child_cancel_fails_parent_step(
    ow: ow_es.OpenWorkflow,
) -> None:
    @ow.workflow(name="slow-child")
    async def slow_child(ctx: ow_es.Context) -> None:
        await ctx.step.sleep("long", "1h")

    @ow.workflow(name="holder")
    async def holder(ctx: ow_es.Context) -> Any:
        try:
            await ctx.step.run_workflow(slow_child, None)
        except ow_es.StepFailed as exc:
            return exc.error_type
        return "finished"

    await ow.connect()
    async with running_worker(ow, concurrency=4):
        parent = await holder.start()
        await eventually(lambda: _has_children(ow, parent.run_id))
        (child,) = await ow.store.list_children(parent.run_id)
        await eventually(lambda: _is_sleeping(ow, child.id))
        # Canceling the child makes the parent's step fail at once.
        await ow.cancel(child.id)
        assert await parent.result(timeout=10) == "WorkflowCanceled"

        other = await holder.start()
        await eventually(lambda: _has_children(ow, other.run_id))
        await other.cancel()  # cascade=True by default
        (grandchild,) = await ow.store.list_children(other.run_id)
        assert (await ow.store.get_run(grandchild.id)).status == "canceled"  # type: ignore[union-attr]
        with pytest.raises(ow_es.WorkflowCanceled):
            await other.result(timeout=5)


async def test_child_started_exactly_once_across_replays(ow: ow_es.OpenWorkflow) -> None:
    calls = {"n": 0}

    @ow.workflow(name="kid")
    async def kid(ctx: ow_es.Context) -> str:
        return "kid-done"

    @ow.workflow(name="mom")
    async def mom(ctx: ow_es.Context) -> Any:
        result = await ctx.step.run_workflow(kid, None)

        def flaky() -> int:
            calls["n"] += 1
            if calls["n"] < 3:
                raise RuntimeError("again")
            return calls["n"]

        await ctx.step.run("flaky", flaky, retry=ow_es.RetryPolicy(initial_interval="10ms"))
        return result

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        handle = await mom.start()
        assert await handle.result(timeout=20) == "kid-done"
    assert len(await ow.store.list_children(handle.run_id)) == 1


async def _has_children(client: ow_es.OpenWorkflow, run_id: str) -> bool:
    return bool(await client.store.list_children(run_id))


async def _is_sleeping(client: ow_es.OpenWorkflow, run_id: str) -> bool:
    run = await client.store.get_run(run_id)
    return bool(run and run.waiting_for and run.waiting_for.get("kind") == "sleep")
