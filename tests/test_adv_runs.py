"""Adversarial: step naming, StepAttempt kinds, waiting_for shapes through history and
state_at, cancel and resume edge cases."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import msgspec
import pytest

import ow_es
from tests.support.runs import event_types
from tests.support.waiting import eventually
from tests.support.workers import running_worker


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


async def _parked(client: ow_es.OpenWorkflow, run_id: str, kind: str, **match: Any) -> bool:
    run = await client.store.get_run(run_id)
    if run is None or run.worker_id is not None or not run.waiting_for:
        return False
    wf = run.waiting_for
    return wf.get("kind") == kind and all(wf.get(k) == v for k, v in match.items())


async def test_generated_step_names_never_collide_with_explicit_ones(
    ow: ow_es.OpenWorkflow,
) -> None:
    """`x`, then a step literally named `x:1`, then `x` again: three different steps, and
    the replay (after the sleep) gives each its own recorded result."""
    calls: list[str] = []

    def make(value: str) -> Any:
        def fn() -> str:
            calls.append(value)
            return value

        return fn

    @ow.workflow(name="name-clash")
    async def name_clash(ctx: ow_es.Context) -> Any:
        a = await ctx.step.run("x", make("a"))
        b = await ctx.step.run("x:1", make("b"))
        c = await ctx.step.run("x", make("c"))
        await ctx.step.sleep("replay-me", "10ms")
        return [a, b, c]

    await ow.connect()
    async with running_worker(ow):
        handle = await name_clash.start()
        assert await handle.result(timeout=15) == ["a", "b", "c"]
    assert sorted(calls) == ["a", "b", "c"]  # each ran once
    steps = [s for s in await ow.store.step_attempts(handle.run_id) if s.kind == "function"]
    assert len({s.step_name for s in steps}) == 3, [(s.step_name, s.attempt) for s in steps]
    assert all(s.attempt == 1 for s in steps)


async def test_step_attempt_kinds_and_default_names(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="kid-of-kinds")
    async def kid(ctx: ow_es.Context) -> str:
        return "kid"

    @ow.workflow(name="all-kinds")
    async def all_kinds(ctx: ow_es.Context) -> Any:
        await ctx.step.run("fn", lambda: 1)
        await ctx.step.sleep("nap", "10ms")
        got = await ctx.step.wait_for_signal("approve", timeout="20s")
        sent = await ctx.step.send_signal("done", {"ok": True})
        child = await ctx.step.run_workflow(kid, None)
        return [got, sent, child]

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        handle = await all_kinds.start()
        await eventually(lambda: _parked(ow, handle.run_id, "signal", name="approve"))
        assert await ow.send_signal("approve", "yes") == [handle.run_id]
        assert await handle.result(timeout=15) == ["yes", [], "kid"]
    steps = {s.step_name: s for s in await ow.store.step_attempts(handle.run_id)}
    assert {name: s.kind for name, s in steps.items()} == {
        "fn": "function",
        "nap": "sleep",
        "approve": "signal_wait",
        "send:done": "signal_send",
        "child:kid-of-kinds": "workflow",
    }
    (child,) = await ow.store.list_children(handle.run_id)
    for name, step in steps.items():
        assert (step.attempt, step.status, step.error) == (1, "completed", None), name
        assert step.started_at is not None and step.finished_at is not None, name
        assert step.started_at <= step.finished_at, name
        assert step.child_run_id == (child.id if step.kind == "workflow" else None), name
    assert steps["approve"].output == "yes"
    assert steps["send:done"].output == []
    assert steps["child:kid-of-kinds"].output == "kid"
    # The rows the inline projection wrote are the rows the log folds to.
    final = await ow.state_at(handle.run_id, (await handle.status()).seq)
    assert final.steps == await ow.store.step_attempts(handle.run_id)


async def test_waiting_for_shapes_in_history_and_state_at(ow: ow_es.OpenWorkflow) -> None:
    failures = {"n": 0}

    @ow.workflow(name="shape-kid")
    async def shape_kid(ctx: ow_es.Context) -> str:
        return await ctx.step.wait_for_signal("kid-go", timeout="20s")

    @ow.workflow(name="shapes")
    async def shapes(ctx: ow_es.Context) -> Any:
        def flaky() -> str:
            failures["n"] += 1
            if failures["n"] == 1:
                raise ConnectionError("once")
            return "ok"

        await ctx.step.run("flaky", flaky, retry=ow_es.RetryPolicy(initial_interval="50ms"))
        await ctx.step.sleep("nap", "50ms")
        signal = await ctx.step.wait_for_signal("approve", timeout="20s")
        child = await ctx.step.run_workflow(shape_kid, None)
        return [signal, child]

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        handle = await shapes.start()
        await eventually(lambda: _parked(ow, handle.run_id, "signal", name="approve"))
        assert await ow.send_signal("approve", "A") == [handle.run_id]
        await eventually(lambda: _parked(ow, handle.run_id, "child"))
        (child,) = await ow.store.list_children(handle.run_id)
        live = (await handle.status()).waiting_for
        assert live is not None and live["run_id"] == child.id
        await eventually(lambda: _parked(ow, child.id, "signal", name="kid-go"))
        assert await ow.send_signal("kid-go", "K") == [child.id]
        assert await handle.result(timeout=15) == ["A", "K"]

    events = await ow.history(handle.run_id)
    seen: dict[str, dict[str, Any]] = {}
    for event in events:
        state = await ow.state_at(handle.run_id, event.seq)
        assert state.run.seq == event.seq
        wf = state.run.waiting_for
        if event.type == "retry_scheduled":
            assert wf is not None and wf["kind"] == "retry" and wf["step"] == "flaky"
            assert _as_datetime(wf["until"]) == _as_datetime(event.data["until"])
        elif event.type == "run_sleeping":
            assert wf is not None and wf["kind"] == "sleep"
            assert _as_datetime(wf["until"]) == _as_datetime(event.data["until"])
        elif event.type == "run_waiting":
            assert wf is not None and wf["kind"] in ("signal", "child")
            if wf["kind"] == "signal":
                assert wf["name"] == "approve"
            else:
                assert wf["run_id"] == child.id
        elif event.type in ("run_claimed", "signal_received", "child_finished", "run_completed"):
            assert wf is None, (event.type, wf)
        if wf is not None:
            assert state.run.status == "running" and state.run.worker_id is None
            assert state.run.lease_until is None
            seen[wf["kind"]] = wf
    assert set(seen) == {"retry", "sleep", "signal", "child"}
    received = next(e for e in events if e.type == "signal_received")
    at_receipt = await ow.state_at(handle.run_id, received.seq)
    wait = next(s for s in at_receipt.steps if s.step_name == "approve")
    assert (wait.kind, wait.status, wait.output) == ("signal_wait", "completed", "A")
    finished = next(e for e in events if e.type == "child_finished")
    assert finished.data["child_run_id"] == child.id and finished.data["status"] == "completed"
    final = await ow.state_at(handle.run_id, events[-1].seq)
    assert msgspec.structs.replace(final.run, lease_until=None) == await handle.status()


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
        await eventually(lambda: _parked(ow, handle.run_id, "signal", name="soon"))
        # After the short wait times out (its step completes with None), the sleep is the one
        # due first. A replay must not forget the sibling waits it does not reach first.
        await eventually(lambda: _parked(ow, handle.run_id, "sleep", step="nap"), timeout=3)
        wf = (await handle.status()).waiting_for
        assert wf is not None and "until" in wf
        # A signal for the wait that is not the one shown is still delivered.
        assert await ow.send_signal("whenever", "w") == [handle.run_id]
        assert await handle.result(timeout=15) == ["w", None, None]


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
        parked = await parks.start()
        await eventually(lambda: _parked(ow, parked.run_id, "signal", name="cancel-me"))
        await parked.cancel()
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
        await ow.resume(parked.run_id)  # canceled runs do not resume
    assert (await event_types(ow, parked.run_id))[-1] == "run_canceled"
    assert (await event_types(ow, pending.run_id)).count("run_canceled") == 1


async def test_resume_keeps_a_received_signal(ow: ow_es.OpenWorkflow) -> None:
    healthy = {"value": False}

    @ow.workflow(name="signal-then-fail")
    async def signal_then_fail(ctx: ow_es.Context) -> Any:
        data = await ctx.step.wait_for_signal("input", timeout="20s")

        def use() -> str:
            if not healthy["value"]:
                raise ow_es.NonRetryableError("not yet")
            return f"used {data}"

        return await ctx.step.run("use", use)

    await ow.connect()
    async with running_worker(ow):
        handle = await signal_then_fail.start()
        await eventually(lambda: _parked(ow, handle.run_id, "signal", name="input"))
        assert await ow.send_signal("input", "D") == [handle.run_id]
        with pytest.raises(ow_es.WorkflowFailed, match="not yet"):
            await handle.result(timeout=10)
        healthy["value"] = True
        # Two concurrent resumes: exactly one takes effect.
        outcomes = await asyncio.gather(
            ow.resume(handle.run_id), ow.resume(handle.run_id), return_exceptions=True
        )
        assert sum(isinstance(o, ow_es.InvalidTransition) for o in outcomes) == 1, outcomes
        assert await handle.result(timeout=10) == "used D"
    types = await event_types(ow, handle.run_id)
    assert types.count("run_resumed") == 1 and types.count("signal_received") == 1
    # The signal is not waited for again after the resume.
    assert types.count("run_waiting") == 1
