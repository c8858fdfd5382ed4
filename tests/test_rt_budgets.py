"""Attempts count failures, not claims: sleeps, wake-ups and lease takeovers spend no budget."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import ow_es
from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.store import Appended, AppendRequest
from tests.support.runs import event_types
from tests.support.waiting import eventually
from tests.support.workers import running_worker


def _fast(attempts: int) -> ow_es.RetryPolicy:
    return ow_es.RetryPolicy(
        initial_interval="1ms", maximum_interval="1ms", maximum_attempts=attempts
    )


async def test_sleeps_between_failures_spend_no_budget(ow: ow_es.OpenWorkflow) -> None:
    calls = {"flaky1": 0, "flaky2": 0}
    attempts_seen: list[int] = []

    @ow.workflow(name="sleepy-flaky", retry=_fast(2))
    async def sleepy_flaky(ctx: ow_es.Context) -> str:
        def flaky(name: str) -> Callable[[], Awaitable[str]]:
            async def fn() -> str:
                calls[name] += 1
                if calls[name] <= 2:
                    raise RuntimeError(f"{name} failure {calls[name]}")
                return name

            return fn

        await ctx.step.sleep("nap-1", "30ms")
        one = await ctx.step.run("flaky1", flaky("flaky1"), retry=_fast(3))
        await ctx.step.sleep("nap-2", "30ms")
        await ctx.step.sleep("nap-3", "30ms")
        two = await ctx.step.run("flaky2", flaky("flaky2"), retry=_fast(3))
        await ctx.step.sleep("nap-4", "30ms")
        attempts_seen.append(ctx.run.attempt)
        if ctx.run.attempt == 1:
            raise RuntimeError("the body fails once")
        return f"{one}+{two}"

    await ow.connect()
    async with running_worker(ow):
        handle = await sleepy_flaky.start()
        assert await handle.result(timeout=20) == "flaky1+flaky2"
    # Each step spent exactly its three attempts, the body its two, despite many claims.
    assert calls == {"flaky1": 3, "flaky2": 3}
    assert attempts_seen == [1, 2]
    run = await handle.status()
    assert run.attempts == 2
    types = await event_types(ow, handle.run_id)
    assert types.count("run_claimed") >= 9
    assert types.count("run_sleeping") >= 4


async def test_lease_takeovers_spend_no_budget(ow: ow_es.OpenWorkflow) -> None:
    """A run whose lease was taken over several times (crashed owners) still gets its whole
    body and step budgets, and ``ctx.run.attempt`` stays 1."""
    attempts_seen: list[int] = []
    calls: list[int] = []

    @ow.workflow(name="churned")
    async def churned(ctx: ow_es.Context) -> int:
        attempts_seen.append(ctx.run.attempt)

        async def flaky() -> int:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("the first real attempt fails")
            return len(calls)

        return await ctx.step.run("flaky", flaky, retry=_fast(2))

    await ow.connect()
    handle = await churned.start()
    keys = [("churned", None)]
    tokens: list[str] = []
    for ghost in ("ghost-1", "ghost-2", "ghost-3"):
        got: list[ow_es.WorkflowRun] = []

        async def claimed(ghost: str = ghost, got: list[ow_es.WorkflowRun] = got) -> bool:
            got.extend(await ow.store.claim(ghost, keys, 1, 0.1))
            return bool(got)

        await eventually(claimed, timeout=5)
        tokens.append(str(got[0].claim_token))
    assert len(set(tokens)) == 3
    row = await handle.status()
    assert row.attempts == 1

    await asyncio.sleep(0.15)  # the last ghost's lease expires too
    async with running_worker(ow):
        assert await handle.result(timeout=15) == 2
    assert set(attempts_seen) == {1}
    assert len(calls) == 2
    run = await handle.status()
    assert run.attempts == 1
    claims = [e for e in await ow.history(handle.run_id) if e.type == "run_claimed"]
    assert len(claims) >= 5


async def test_failures_recorded_by_crashed_owners_count_and_claims_do_not(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Two owners each recorded a failed attempt of a step and then vanished; a third gets
    exactly the one attempt left of three."""
    calls: list[int] = []

    @ow.workflow(name="inherited")
    async def inherited(ctx: ow_es.Context) -> str:
        async def step() -> str:
            calls.append(1)
            return "third time lucky"

        return await ctx.step.run("step", step, retry=_fast(3))

    await ow.connect()
    handle = await inherited.start()
    keys = [("inherited", None)]
    for attempt, ghost in ((1, "ghost-1"), (2, "ghost-2")):
        got: list[ow_es.WorkflowRun] = []

        async def claimed(ghost: str = ghost, got: list[ow_es.WorkflowRun] = got) -> bool:
            got.extend(await ow.store.claim(ghost, keys, 1, 0.15))
            return bool(got)

        await eventually(claimed, timeout=5)
        (outcome,) = await ow.store.append(
            [
                AppendRequest(
                    run_id=handle.run_id,
                    claim_token=got[0].claim_token,
                    events=[
                        ev.StepFailed(
                            step_name="step",
                            kind="function",
                            attempt=attempt,
                            error={"type": "RuntimeError", "message": "lost", "traceback": ""},
                            started_at=utcnow(),
                            final=False,
                            worker_id=ghost,
                        )
                    ],
                )
            ]
        )
        assert isinstance(outcome, Appended)
    await asyncio.sleep(0.2)
    async with running_worker(ow):
        assert await handle.result(timeout=15) == "third time lucky"
    assert calls == [1]
    steps = await ow.store.step_attempts(handle.run_id)
    assert sorted((s.attempt, s.status) for s in steps) == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]


async def test_crashed_owners_use_up_a_budget_only_by_failures(ow: ow_es.OpenWorkflow) -> None:
    """With the budget spent by recorded failures, the next owner does not call the step."""
    calls: list[int] = []

    @ow.workflow(name="spent")
    async def spent(ctx: ow_es.Context) -> list[object]:
        async def step() -> str:
            calls.append(1)
            return "should not run"

        try:
            await ctx.step.run("step", step, retry=_fast(1))
        except ow_es.StepFailed as exc:
            return [exc.error_type, exc.attempts]
        return []

    await ow.connect()
    handle = await spent.start()
    (run,) = await ow.store.claim("ghost", [("spent", None)], 1, 0.15)
    (outcome,) = await ow.store.append(
        [
            AppendRequest(
                run_id=handle.run_id,
                claim_token=run.claim_token,
                events=[
                    ev.StepFailed(
                        step_name="step",
                        kind="function",
                        attempt=1,
                        error={"type": "ValueError", "message": "bad", "traceback": ""},
                        started_at=utcnow(),
                        final=True,
                        worker_id="ghost",
                    )
                ],
            )
        ]
    )
    assert isinstance(outcome, Appended)
    await asyncio.sleep(0.2)
    async with running_worker(ow):
        assert await handle.result(timeout=15) == ["ValueError", 1]
    assert calls == []
