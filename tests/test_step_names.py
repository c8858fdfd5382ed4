"""Parallel steps with asyncio.gather: names by call order, deterministic replay."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import ow_es
from tests.support.workers import running_worker


async def test_gathered_steps_are_named_by_call_order_and_replayed(
    ow: ow_es.OpenWorkflow,
) -> None:
    calls: dict[str, int] = {}
    delays = [0.3, 0.1, 0.0]  # the first call finishes last

    def fetcher(i: int) -> Callable[[], Awaitable[int]]:
        async def fetch() -> int:
            calls[f"fetch#{i}"] = calls.get(f"fetch#{i}", 0) + 1
            await asyncio.sleep(delays[i])
            return i * 10

        return fetch

    @ow.workflow(name="fan-out")
    async def fan_out(ctx: ow_es.Context) -> dict[str, object]:
        first = await asyncio.gather(*(ctx.step.run("fetch", fetcher(i)) for i in range(3)))
        await ctx.step.sleep("nap", "100ms")  # the run is replayed from the top after this

        async def late() -> int:
            calls["late"] = calls.get("late", 0) + 1
            return 99

        again = await ctx.step.run("fetch", late)
        return {"first": first, "again": again}

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        handle = await fan_out.start()
        out = await handle.result(timeout=15)
    assert out == {"first": [0, 10, 20], "again": 99}
    assert calls == {"fetch#0": 1, "fetch#1": 1, "fetch#2": 1, "late": 1}

    events = await ow.history(handle.run_id)
    done = [e for e in events if e.type == "step_completed" and e.data["kind"] == "function"]
    by_name = {e.data["step_name"]: e.data["output"] for e in done}
    assert by_name == {"fetch": 0, "fetch:1": 10, "fetch:2": 20, "fetch:3": 99}
    # They completed out of call order, yet each name kept its own call's result.
    order = [e.data["step_name"] for e in done]
    assert order.index("fetch:2") < order.index("fetch")
    assert [e.type for e in events].count("run_claimed") == 2


async def test_mixed_names_in_a_gather(ow: ow_es.OpenWorkflow) -> None:
    calls: list[str] = []

    def step(label: str, delay: float) -> Callable[[], Awaitable[str]]:
        async def fn() -> str:
            calls.append(label)
            await asyncio.sleep(delay)
            return label

        return fn

    @ow.workflow(name="mixed")
    async def mixed(ctx: ow_es.Context) -> list[str]:
        results = await asyncio.gather(
            ctx.step.run("a", step("a0", 0.1)),
            ctx.step.run("b", step("b0", 0.0)),
            ctx.step.run("a", step("a1", 0.0)),
            ctx.step.run("b", step("b1", 0.05)),
        )
        await ctx.step.sleep("nap", "50ms")
        return list(results)

    await ow.connect()
    async with running_worker(ow):
        handle = await mixed.start()
        assert await handle.result(timeout=15) == ["a0", "b0", "a1", "b1"]
    assert sorted(calls) == ["a0", "a1", "b0", "b1"]
    steps = await ow.store.step_attempts(handle.run_id)
    names = {s.step_name: s.output for s in steps if s.kind == "function"}
    assert names == {"a": "a0", "b": "b0", "a:1": "a1", "b:1": "b1"}


async def test_gather_with_one_failing_step_retries_only_that_one(
    ow: ow_es.OpenWorkflow,
) -> None:
    calls: dict[int, int] = {0: 0, 1: 0, 2: 0}
    fast = ow_es.RetryPolicy(initial_interval="1ms", maximum_interval="1ms", maximum_attempts=3)

    def part(i: int) -> Callable[[], Awaitable[int]]:
        async def fn() -> int:
            calls[i] += 1
            if i == 1 and calls[i] < 3:
                raise RuntimeError("part 1 is flaky")
            await asyncio.sleep(0.05 * i)
            return i

        return fn

    @ow.workflow(name="gather-retry")
    async def gather_retry(ctx: ow_es.Context) -> list[int]:
        return list(
            await asyncio.gather(*(ctx.step.run("part", part(i), retry=fast) for i in range(3)))
        )

    await ow.connect()
    async with running_worker(ow):
        handle = await gather_retry.start()
        assert await handle.result(timeout=15) == [0, 1, 2]
    assert calls == {0: 1, 1: 3, 2: 1}
    steps = await ow.store.step_attempts(handle.run_id)
    assert sorted((s.step_name, s.attempt, s.status) for s in steps) == [
        ("part", 1, "completed"),
        ("part:1", 1, "failed"),
        ("part:1", 2, "failed"),
        ("part:1", 3, "completed"),
        ("part:2", 1, "completed"),
    ]
