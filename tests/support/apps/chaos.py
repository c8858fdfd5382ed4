"""The chaos app, served by ``ow-es worker tests.support.apps.chaos`` processes: every step
execution appends one line to a per-run file in ``$CHAOS_STATE`` (O_APPEND, one write: atomic
even under SIGKILL), so executions can be counted across processes. Runs are started by name
from the test process; the definitions are used only here."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import ow_es


def state() -> Path:
    return Path(os.environ["CHAOS_STATE"])


def mark(run_id: str, step: str) -> None:
    line = f"{step} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(state() / f"exec-{run_id}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def pause(n: int, step: str) -> float:
    """0.1 to 0.4 s, fixed per run and step."""
    return 0.1 + ((n * 7 + ord(step) * 13) % 4) * 0.1


async def gate(name: str, limit: float = 60.0) -> None:
    """Wait until the test opens the gate (a file), when this process is gated."""
    if os.environ.get("CHAOS_GATED") != "1":
        return
    end = time.monotonic() + limit
    while not (state() / name).exists() and time.monotonic() < end:
        await asyncio.sleep(0.01)


def sync_gate(name: str, limit: float = 60.0) -> None:
    if os.environ.get("CHAOS_GATED") != "1":
        return
    end = time.monotonic() + limit
    while not (state() / name).exists() and time.monotonic() < end:
        time.sleep(0.01)


@ow_es.workflow(name="chaos")
async def chaos(ctx: ow_es.Context, n: int) -> list[int]:
    run = ctx.run.id

    async def a() -> int:
        mark(run, "a")
        await asyncio.sleep(pause(n, "a"))
        return n

    def b() -> int:  # a sync step: runs in the worker's thread pool
        mark(run, "b")
        time.sleep(pause(n, "b"))
        return n * 2

    async def c() -> int:
        mark(run, "c")
        await asyncio.sleep(pause(n, "c"))
        return n * 3

    async def d() -> int:
        mark(run, "d")
        await asyncio.sleep(pause(n, "d"))
        return n * 4

    async def e() -> int:  # fails on its first execution, then succeeds
        mark(run, "e")
        flag = state() / f"failed-{run}"
        if not flag.exists():
            flag.touch()
            raise RuntimeError("e fails once")
        await asyncio.sleep(0.05)
        return n * 5

    one = await ctx.step.run("a", a)
    two, three = await asyncio.gather(ctx.step.run("b", b), ctx.step.run("c", c))
    four = await ctx.step.run("d", d)
    await ctx.step.sleep("nap", "300ms")  # parks the run: any worker may wake it
    # Two attempts: enough only if takeovers and wake-ups use up no attempt.
    retry = ow_es.RetryPolicy(initial_interval="200ms", maximum_attempts=2)
    five = await ctx.step.run("e", e, retry=retry)
    return [one, two, three, four, five]


@ow_es.workflow(name="relay")
async def relay(ctx: ow_es.Context, n: int) -> list[int]:
    """Three steps; a gated process holds step "a" or "b" until the test opens its gate
    (files open-a-N / open-b-N)."""
    run = ctx.run.id

    async def a() -> int:
        mark(run, "a")
        await gate(f"open-a-{n}")
        return n

    async def b() -> int:
        mark(run, "b")
        await gate(f"open-b-{n}")
        await asyncio.sleep(float(os.environ.get("CHAOS_B_SECONDS", "0")))
        return n * 2

    def b_sync() -> int:
        mark(run, "b")
        sync_gate(f"open-b-{n}")
        return n * 2

    async def c() -> int:
        mark(run, "c")
        return n * 3

    one = await ctx.step.run("a", a)
    if n == 1:
        two = await ctx.step.run("b", b_sync)
    else:
        two = await ctx.step.run("b", b)
    three = await ctx.step.run("c", c)
    return [one, two, three]
