"""Step names: parallel steps in a gather are named by call order and each replays its own
result, generated names never collide with explicit ones, and every kind of step gets its
default name and its StepAttempt row."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import ow_es
from tests.support.runs import parked
from tests.support.waiting import eventually
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
        await eventually(lambda: parked(ow, handle.run_id, "signal", name="approve"))
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
