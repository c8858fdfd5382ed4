"""The workflows the benchmark runs. Shared by the client (bench.py) and the worker process."""

from __future__ import annotations

import time
from datetime import timedelta

import ow_es
from ow_es import Context

NOOP_STEPS = 4


async def _noop() -> None:
    return None


async def _clock() -> float:
    return time.time()


@ow_es.workflow(name="bench-noop4")
async def noop4(ctx: Context) -> int:
    """(a) throughput: four no-op ``async def`` steps."""
    for index in range(NOOP_STEPS):
        await ctx.step.run(f"noop-{index}", _noop)
    return NOOP_STEPS


@ow_es.workflow(name="bench-first-step-clock")
async def first_step_clock(ctx: Context) -> float:
    """(b) latency: the first step records the wall clock when it starts."""
    started: float = await ctx.step.run("clock", _clock)
    return started


# The default budget (1000 step attempts per run) would stop `--steps` above 1000.
@ow_es.workflow(name="bench-sequential", max_step_attempts=1_000_000)
async def sequential(ctx: Context, steps: int) -> int:
    """(c) ``steps`` sequential no-op ``async def`` steps in one run."""
    for index in range(steps):
        await ctx.step.run(f"step-{index}", _noop)
    return steps


@ow_es.workflow(name="bench-long", max_step_attempts=1_000_000)
async def long_history(ctx: Context, spec: dict[str, float]) -> int:
    """(g) ``steps`` no-op steps; after every ``every``-th one the run sleeps ``sleep_ms`` (long
    enough to park: a sleep already due when it is recorded completes without parking)."""
    steps, every = int(spec["steps"]), int(spec["every"])
    nap = timedelta(milliseconds=spec["sleep_ms"])
    for index in range(1, steps + 1):
        await ctx.step.run(f"step-{index}", _noop)
        if index % every == 0:
            await ctx.step.sleep(f"nap-{index}", nap)
    return steps


SEED_STEPS = 6


@ow_es.workflow(name="bench-seed-done")
async def seed_done(ctx: Context) -> int:
    """(f) the shape of the seeded terminal runs (seed.sql writes their history directly)."""
    for index in range(SEED_STEPS):
        await ctx.step.run(f"noop-{index}", _noop)
    return SEED_STEPS


@ow_es.workflow(name="bench-seed-sleep")
async def seed_sleep(ctx: Context) -> int:
    """(f) the shape of the seeded parked runs: six steps, then a sleep of a year."""
    for index in range(SEED_STEPS):
        await ctx.step.run(f"noop-{index}", _noop)
    await ctx.step.sleep("nap", "365d")
    return SEED_STEPS


ALL: tuple[ow_es.Workflow[object], ...] = (
    noop4,
    first_step_clock,
    sequential,
    long_history,
    seed_done,
    seed_sleep,
)
