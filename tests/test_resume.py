"""``resume``: a failed run goes on from its failed step; nothing is lost or re-run, a received
signal is kept."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

import ow_es
from tests.support.runs import event_types, parked
from tests.support.waiting import eventually
from tests.support.workers import running_worker


async def test_resume_continues_from_the_failed_step(ow: ow_es.OpenWorkflow) -> None:
    calls = {"first": 0, "flaky": 0}
    healthy = {"value": False}

    def first() -> int:
        calls["first"] += 1
        return 1

    def flaky() -> int:
        calls["flaky"] += 1
        if not healthy["value"]:
            raise ConnectionError("down")
        return 2

    @ow.workflow(name="resumable")
    async def resumable(ctx: ow_es.Context) -> int:
        a = await ctx.step.run("first", first)
        b = await ctx.step.run(
            "flaky", flaky, retry=ow_es.RetryPolicy(initial_interval="5ms", maximum_attempts=2)
        )
        return a + b

    await ow.connect()
    async with running_worker(ow):
        handle = await resumable.start()
        with pytest.raises(ow_es.WorkflowFailed, match="StepFailed"):
            await handle.result(timeout=20)
        before = await ow.history(handle.run_id)
        assert calls == {"first": 1, "flaky": 2}

        healthy["value"] = True
        await ow.resume(handle.run_id)
        assert await handle.result(timeout=20) == 3
    assert calls == {"first": 1, "flaky": 3}  # completed steps are not re-run
    after = await ow.history(handle.run_id)
    assert after[: len(before)] == before  # nothing deleted or rewritten
    assert "run_resumed" in [e.type for e in after[len(before) :]]
    attempts = [
        (s.step_name, s.attempt, s.status) for s in await ow.store.step_attempts(handle.run_id)
    ]
    assert attempts == [
        ("first", 1, "completed"),
        ("flaky", 1, "failed"),
        ("flaky", 2, "failed"),
        ("flaky", 3, "completed"),  # attempt numbers go on; the budget started afresh
    ]
    with pytest.raises(ow_es.InvalidTransition, match="only a failed run"):
        await ow.resume(handle.run_id)


async def test_resume_refuses_deadline_failures_and_unknown_runs(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="late")
    async def late(ctx: ow_es.Context) -> None:
        return None

    await ow.connect()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    handle = await late.start(deadline_at=past)
    async with running_worker(ow):
        await eventually(lambda: _failed(handle))
    assert "run_claimed" not in await event_types(ow, handle.run_id)
    with pytest.raises(ow_es.InvalidTransition, match="deadline"):
        await ow.resume(handle.run_id)
    with pytest.raises(ow_es.RunNotFound):
        await ow.resume("no-such-run")


async def _failed(handle: ow_es.RunHandle) -> bool:
    return (await handle.status()).status == "failed"


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
        await eventually(lambda: parked(ow, handle.run_id, "signal", name="input"))
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
