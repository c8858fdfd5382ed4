"""Child workflows: started once across replays, results and failures back to the parent,
versions, unserved children, signals between parent and child, cancel cascades (and
refusing them), payload limits."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

import ow_es
from tests.support.databases import ClientFactory
from tests.support.runs import event_types, parked
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


async def _status(client: ow_es.OpenWorkflow, run_id: str) -> str:
    run = await client.store.get_run(run_id)
    assert run is not None
    return run.status


async def _children(client: ow_es.OpenWorkflow, run_id: str) -> list[ow_es.WorkflowRun]:
    return await client.store.list_children(run_id)


async def test_child_finishing_before_the_parent_parks(ow: ow_es.OpenWorkflow) -> None:
    """The child ends while its parent still runs a sibling step: the parent must not then
    park waiting for a child that has already finished."""
    release = asyncio.Event()

    @ow.workflow(name="quick-kid")
    async def quick_kid(ctx: ow_es.Context, n: int) -> int:
        return n + 1

    @ow.workflow(name="busy-parent")
    async def busy_parent(ctx: ow_es.Context) -> Any:
        async def slow() -> str:
            await release.wait()
            return "slow"

        return await asyncio.gather(ctx.step.run_workflow(quick_kid, 41), ctx.step.run("s", slow))

    await ow.connect()
    async with running_worker(ow, concurrency=3):
        parent = await busy_parent.start()
        await eventually(lambda: _children(ow, parent.run_id))
        (child,) = await _children(ow, parent.run_id)
        await eventually(lambda: _is(ow, child.id, "completed"))
        await eventually(lambda: _has_event(ow, parent.run_id, "child_finished"))
        assert (await parent.status()).worker_id is not None  # still busy with "s"
        release.set()
        assert await parent.result(timeout=5) == [42, "slow"]
    step = next(s for s in await ow.store.step_attempts(parent.run_id) if s.kind == "workflow")
    assert (step.step_name, step.status, step.output, step.child_run_id) == (
        "child:quick-kid",
        "completed",
        42,
        child.id,
    )


async def _is(client: ow_es.OpenWorkflow, run_id: str, status: str) -> bool:
    return await _status(client, run_id) == status


async def _has_event(client: ow_es.OpenWorkflow, run_id: str, kind: str) -> bool:
    return kind in await event_types(client, run_id)


async def test_child_signals_its_parent(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="notifier")
    async def notifier(ctx: ow_es.Context, payload: dict[str, Any]) -> Any:
        await ctx.step.sleep("settle", "100ms")  # let the parent park on its wait first
        reached = await ctx.step.send_signal("kid-progress", payload)
        return {"reached": reached}

    @ow.workflow(name="listener")
    async def listener(ctx: ow_es.Context) -> Any:
        progress, child = await asyncio.gather(
            ctx.step.wait_for_signal("kid-progress", timeout="20s"),
            ctx.step.run_workflow(notifier, {"pct": 50}),
        )
        return {"progress": progress, "child": child}

    await ow.connect()
    async with running_worker(ow, concurrency=4):
        parent = await listener.start()
        result = await parent.result(timeout=15)
    assert result == {"progress": {"pct": 50}, "child": {"reached": [parent.run_id]}}
    (child,) = await _children(ow, parent.run_id)
    sent = [e for e in await ow.history(child.id) if e.type == "signal_sent"]
    assert len(sent) == 1 and sent[0].data["delivered_to"] == [parent.run_id]
    kinds = {s.step_name: s.kind for s in await ow.store.step_attempts(child.id)}
    assert kinds == {"settle": "sleep", "send:kid-progress": "signal_send"}


async def test_cancel_without_cascade_leaves_children_running(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="gated-kid")
    async def gated_kid(ctx: ow_es.Context) -> str:
        got: str = await ctx.step.wait_for_signal("kid-go", timeout="20s")
        return got

    @ow.workflow(name="lone-parent")
    async def lone_parent(ctx: ow_es.Context) -> Any:
        return await ctx.step.run_workflow(gated_kid, None)

    await ow.connect()
    async with running_worker(ow, concurrency=4):
        parent = await lone_parent.start()
        await eventually(lambda: _children(ow, parent.run_id))
        (child,) = await _children(ow, parent.run_id)
        await eventually(lambda: parked(ow, child.id, "signal"))
        await eventually(lambda: parked(ow, parent.run_id, "child"))
        await parent.cancel(cascade=False)
        assert await _status(ow, parent.run_id) == "canceled"
        assert await _status(ow, child.id) == "running"
        assert await ow.send_signal("kid-go", "fine") == [child.id]
        child_handle = await ow.get_handle(child.id)
        assert await child_handle.result(timeout=15) == "fine"
        with pytest.raises(ow_es.WorkflowCanceled):
            await parent.result(timeout=1)
    # The canceled parent stays canceled; nothing is appended to it after its cancel.
    types = await event_types(ow, parent.run_id)
    assert types[-1] == "run_canceled", types


async def test_cancel_cascades_to_grandchildren(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="leaf-waiter")
    async def leaf_waiter(ctx: ow_es.Context) -> Any:
        return await ctx.step.wait_for_signal("never-sent", timeout="1m")

    @ow.workflow(name="middle")
    async def middle(ctx: ow_es.Context) -> Any:
        return await ctx.step.run_workflow(leaf_waiter, None)

    @ow.workflow(name="top")
    async def top(ctx: ow_es.Context) -> Any:
        return await ctx.step.run_workflow(middle, None)

    await ow.connect()
    async with running_worker(ow, concurrency=4):
        grandparent = await top.start()
        await eventually(lambda: _children(ow, grandparent.run_id))
        (parent,) = await _children(ow, grandparent.run_id)
        await eventually(lambda: _children(ow, parent.id))
        (grandchild,) = await _children(ow, parent.id)
        await eventually(lambda: parked(ow, grandchild.id, "signal"))
        await grandparent.cancel()
        for run_id in (grandparent.run_id, parent.id, grandchild.id):
            assert await _status(ow, run_id) == "canceled", run_id
        assert await ow.send_signal("never-sent", 1) == []
        await grandparent.cancel()  # again: nothing to do, no error
    for run_id in (parent.id, grandchild.id):
        types = await event_types(ow, run_id)
        assert types.count("run_canceled") == 1 and types[-1] == "run_canceled", types


async def test_run_workflow_by_name_with_version(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="versioned-kid", version="1")
    async def kid_v1(ctx: ow_es.Context, n: int) -> str:
        return f"v1:{n}"

    @ow.workflow(name="versioned-kid", version="2")
    async def kid_v2(ctx: ow_es.Context, n: int) -> str:
        return f"v2:{n}"

    @ow.workflow(name="version-picker")
    async def picker(ctx: ow_es.Context) -> Any:
        by_name = await ctx.step.run_workflow("versioned-kid", 1, version="2")
        by_def = await ctx.step.run_workflow(kid_v1, 2)
        override = await ctx.step.run_workflow(kid_v1, 3, version="2", name="forced")
        try:
            await ctx.step.run_workflow("versioned-kid", 4, timeout="300ms", name="unversioned")
        except ow_es.StepFailed as exc:
            unversioned = exc.error_type
        else:
            unversioned = "completed"
        return [by_name, by_def, override, unversioned]

    await ow.connect()
    async with running_worker(ow, concurrency=4):
        handle = await picker.start()
        assert await handle.result(timeout=15) == ["v2:1", "v1:2", "v2:3", "StepTimeout"]
    children = {c.parent_step_name: c for c in await _children(ow, handle.run_id)}
    assert {k: (c.version, c.status) for k, c in children.items()} == {
        "child:versioned-kid": ("2", "completed"),
        "child:versioned-kid:1": ("1", "completed"),
        "forced": ("2", "completed"),
        "unversioned": (None, "pending"),  # no worker serves the unversioned workflow
    }


async def test_unserved_child_stays_pending_and_the_parent_times_out(
    ow: ow_es.OpenWorkflow,
) -> None:
    @ow.workflow(name="impatient-parent")
    async def impatient_parent(ctx: ow_es.Context) -> Any:
        try:
            await ctx.step.run_workflow("nobody-serves-this", {"x": 1}, timeout="500ms")
        except ow_es.StepFailed as exc:
            return {"type": exc.error_type, "attempts": exc.attempts}
        return "child finished?!"

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        parent = await impatient_parent.start()
        await eventually(lambda: parked(ow, parent.run_id, "child"))
        run = await parent.status()
        (child,) = await _children(ow, parent.run_id)
        assert run.status == "running" and run.worker_id is None
        assert run.waiting_for is not None
        assert run.waiting_for["kind"] == "child" and run.waiting_for["run_id"] == child.id
        assert child.status == "pending" and child.input == {"x": 1}
        assert await parent.result(timeout=10) == {"type": "StepTimeout", "attempts": 1}
    assert "run_claimed" not in await event_types(ow, child.id)
    step = next(s for s in await ow.store.step_attempts(parent.run_id) if s.kind == "workflow")
    assert step.status == "failed" and step.child_run_id == child.id
    assert step.error is not None and step.error["type"] == "StepTimeout"


async def test_resume_after_a_child_failure_runs_the_child_step_again(
    ow: ow_es.OpenWorkflow,
) -> None:
    """A parent failed because its child failed; once the cause is fixed, resuming the parent
    goes on from its failed step (the child step), not straight back to the old failure."""
    healthy = {"value": False}

    @ow.workflow(name="fragile-kid", retry=ow_es.RetryPolicy(maximum_attempts=1))
    async def fragile_kid(ctx: ow_es.Context) -> str:
        def work() -> str:
            if not healthy["value"]:
                raise ow_es.NonRetryableError("broken")
            return "kid-ok"

        return await ctx.step.run("work", work)

    @ow.workflow(name="dependent")
    async def dependent(ctx: ow_es.Context) -> Any:
        before = await ctx.step.run("before", lambda: "before-ok")
        kid = await ctx.step.run_workflow(fragile_kid, None)
        return [before, kid]

    await ow.connect()
    async with running_worker(ow, concurrency=3):
        parent = await dependent.start()
        with pytest.raises(ow_es.WorkflowFailed, match="StepFailed"):
            await parent.result(timeout=15)
        healthy["value"] = True
        await ow.resume(parent.run_id)
        assert await parent.result(timeout=10) == ["before-ok", "kid-ok"]


async def test_child_input_over_the_payload_limit_creates_no_child(
    make_client: ClientFactory,
) -> None:
    ow = await make_client(max_payload_bytes=2000)

    @ow.workflow(name="small-kid")
    async def small_kid(ctx: ow_es.Context, text: str) -> int:
        return len(text)

    @ow.workflow(name="oversharer")
    async def oversharer(ctx: ow_es.Context) -> Any:
        try:
            await ctx.step.run_workflow(small_kid, "z" * 5000)
        except (ow_es.ValidationError, ow_es.StepFailed) as exc:
            return type(exc).__name__
        return "started"

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        handle = await oversharer.start()
        assert await handle.result(timeout=15) in ("ValidationError", "StepFailed")
    assert await _children(ow, handle.run_id) == []
    assert "child_started" not in await event_types(ow, handle.run_id)


async def test_children_started_after_a_cancel_are_canceled_too(ow: ow_es.OpenWorkflow) -> None:
    """A parent fans out while it is canceled: no child may outlive the cancel as a live
    run (every child ends canceled, or was never created). SQLite creates the children one
    transaction at a time and shows the orphans every time; on Postgres they are created so
    fast that only some runs catch it (the next test is the deterministic form)."""

    @ow.workflow(name="fan-parent")
    async def fan_parent(ctx: ow_es.Context) -> Any:
        return await asyncio.gather(*(ctx.step.run_workflow("unserved-leaf", i) for i in range(40)))

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        parent = await fan_parent.start()
        await eventually(lambda: _at_least(ow, parent.run_id, 3), interval=0.001)
        await parent.cancel()
    # The worker is stopped: whatever it was doing with the parent is over.
    children = await _children(ow, parent.run_id)
    assert children, "the parent started children before its cancel"
    alive = [c.id for c in children if c.status != "canceled"]
    assert alive == [], f"{len(alive)} of {len(children)} children outlived the cancel"


async def _at_least(client: ow_es.OpenWorkflow, run_id: str, count: int) -> bool:
    return len(await _children(client, run_id)) >= count


async def test_a_child_created_after_its_parent_was_canceled_is_canceled(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Deterministic form of the race above: the parent starts a child right after it was
    canceled (before its worker has noticed). That child must not live on as an orphan that
    no cascade will ever reach."""
    launch = asyncio.Event()
    launched = asyncio.Event()
    finish = asyncio.Event()

    @ow.workflow(name="slow-spawner")
    async def slow_spawner(ctx: ow_es.Context) -> Any:
        async def hold() -> str:
            await finish.wait()
            return "held"

        async def launch_later() -> Any:
            await launch.wait()  # e.g. a branch that decides late to start a child
            try:
                return await ctx.step.run_workflow("unserved-leaf", "late")
            finally:
                launched.set()

        return await asyncio.gather(ctx.step.run("hold", hold), launch_later())

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        parent = await slow_spawner.start()
        await eventually(lambda: _held(ow, parent.run_id))
        await parent.cancel()
        launch.set()
        await asyncio.wait_for(launched.wait(), 5)
        finish.set()
    children = await _children(ow, parent.run_id)
    # Refusing to start it would do too; a live orphan would not.
    assert [c.status for c in children if c.input == "late"] in ([], ["canceled"]), children


async def _held(client: ow_es.OpenWorkflow, run_id: str) -> bool:
    steps = await client.store.step_attempts(run_id)
    return any(s.step_name == "hold" and s.status == "running" for s in steps)


async def test_refused_cancel_of_a_finished_parent_changes_nothing(
    ow: ow_es.OpenWorkflow,
) -> None:
    """cancel() on a completed run raises InvalidTransition; an error must not come with a
    side effect: the parent's still-pending child (left behind by a step timeout) is not
    canceled by the refused call."""

    @ow.workflow(name="gives-up")
    async def gives_up(ctx: ow_es.Context) -> str:
        try:
            await ctx.step.run_workflow("unserved-leaf", None, timeout="200ms")
        except ow_es.StepFailed:
            return "gave up"
        return "finished"

    await ow.connect()
    async with running_worker(ow):
        parent = await gives_up.start()
        assert await parent.result(timeout=10) == "gave up"
    (child,) = await _children(ow, parent.run_id)
    assert child.status == "pending"
    with pytest.raises(ow_es.InvalidTransition):
        await parent.cancel()
    assert await _status(ow, child.id) == "pending"


class Point(msgspec.Struct):
    x: int
    y: int


async def test_child_output_type_and_gather_naming_by_call_order(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="pointer")
    async def pointer(ctx: ow_es.Context, n: int) -> Point:
        # Later children finish first: completion order is the reverse of call order.
        await ctx.step.sleep("stagger", f"{max(5 - n, 0) * 30}ms")
        return Point(n, -n)

    @ow.workflow(name="collector")
    async def collector(ctx: ow_es.Context) -> Any:
        points = await asyncio.gather(*(ctx.step.run_workflow(pointer, i) for i in range(5)))
        assert all(isinstance(p, Point) for p in points), points  # decoded to the output type
        by_name = await ctx.step.run_workflow("pointer", 9, version=None, name="raw")
        return {"points": [[p.x, p.y] for p in points], "raw": by_name}

    await ow.connect()
    async with running_worker(ow, concurrency=8):
        handle = await collector.start()
        result = await handle.result(timeout=15)
    assert result == {"points": [[i, -i] for i in range(5)], "raw": {"x": 9, "y": -9}}
    children = {c.parent_step_name: c.input for c in await _children(ow, handle.run_id)}
    assert children == {
        "child:pointer": 0,
        "child:pointer:1": 1,
        "child:pointer:2": 2,
        "child:pointer:3": 3,
        "child:pointer:4": 4,
        "raw": 9,
    }
