"""The fault scenarios of docs/reliability.md, run against a real PostgreSQL, with figures.

    python benchmarks/faults.py --database-url postgresql://postgres@127.0.0.1:5432/test

Each scenario runs in a schema of its own and prints one line: what was done, what came out.

* kills every N ms: a worker drains runs that send signals, start children and run steps while
  every session of the worker is terminated every N ms (20 and 300); every run must complete.
* hostile input: generated values (NUL, lone surrogates, NaN and infinity, deep nesting,
  over-long names) through ``start()``; each is refused or stored unchanged, never half-written.
* shutdown: the task running ``worker.run()`` is cancelled with an async and a sync step in
  flight; how long until it returns, and whether both runs were handed back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import msgspec
import psycopg

import ow_es


@asynccontextmanager
async def client(url: str, app: str) -> AsyncIterator[ow_es.OpenWorkflow]:
    schema = f"bench_fault_{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in url else "?"
    ow = ow_es.OpenWorkflow(f"{url}{sep}application_name={app}", schema=schema)
    try:
        yield ow
    finally:
        await ow.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def terminate(url: str, app: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [app],
        ).fetchall()
    return len(rows)


async def kills(url: str, every_ms: int, runs: int, budget: float = 90.0) -> str:
    app = f"owfault_{uuid.uuid4().hex[:8]}"
    async with client(url, app) as ow:

        @ow.workflow(name="fault-child")
        async def child(ctx: ow_es.Context, n: int) -> int:
            return await ctx.step.run("double", lambda: n * 2)

        async def pause() -> None:
            await asyncio.sleep(0.3)  # so that kills land while runs are in flight

        @ow.workflow(name="fault-parent")
        async def parent(ctx: ow_es.Context, n: int) -> int:
            await ctx.step.run("pause", pause)
            await ctx.step.send_signal("fault-nobody", {"n": n})
            doubled: int = await ctx.step.run_workflow(child, n)
            return doubled + await ctx.step.run("one", lambda: 1)

        await ow.connect()
        handles = [await parent.start(n) for n in range(runs)]
        stop = asyncio.Event()
        killed = 0

        async def killer() -> None:
            nonlocal killed
            while not stop.is_set():
                await asyncio.sleep(every_ms / 1000)
                killed += await asyncio.to_thread(terminate, url, app)

        started = time.perf_counter()
        task = asyncio.create_task(killer())
        worker = ow.worker(concurrency=20, lease="3s", heartbeat="500ms", poll_interval="200ms")
        running = asyncio.create_task(worker.run())
        outcomes = await _outcomes(handles, budget)
        during = sum(o == 2 * n + 1 for n, o in enumerate(outcomes))
        seconds = time.perf_counter() - started
        stop.set()
        await task
        calm = time.perf_counter()
        outcomes = await _outcomes(handles, 120.0)  # the kills stopped: the rest must finish
        after = time.perf_counter() - calm
        await worker.stop(timeout=5)
        await running
        good = sum(o == 2 * n + 1 for n, o in enumerate(outcomes))
        failed = sum(isinstance(o, ow_es.WorkflowFailed) for o in outcomes)
    return (
        f"kills every {every_ms} ms: {runs} runs (signal, child, step); {killed} sessions"
        f" terminated in {seconds:.1f} s, {during} runs completed meanwhile; once the kills"
        f" stopped, all done in {after:.1f} s: {good} completed correctly, {failed} failed,"
        f" {runs - good - failed} unfinished"
    )


async def _outcomes(handles: list[ow_es.RunHandle], budget: float) -> list[Any]:
    """Each run's result, or the error that ended it, or the timeout, within ``budget``."""
    outcomes: list[Any] = []
    give_up = time.perf_counter() + budget
    for handle in handles:
        left = give_up - time.perf_counter()
        if left <= 0:
            outcomes.append(None)  # not waited for: the budget is spent
            continue
        try:
            outcomes.append(await asyncio.wait_for(handle.result(), left))
        except (ow_es.OwEsError, TimeoutError) as exc:
            outcomes.append(exc)
    return outcomes


def hostile_values(rng: random.Random, count: int) -> list[Any]:
    pool: list[Any] = [
        "nul\x00inside", "lone \ud800 surrogate", math.nan, math.inf, -math.inf, 1e308,
        {"k\x00": 1}, [1, [2, [3]]], "plain", 42, None, {"ok": [True, 1.5]},
    ]  # fmt: skip
    values = [rng.choice(pool) for _ in range(count)]
    for depth in (100, 900, 2000):
        nested: Any = 0
        for _ in range(depth):
            nested = [nested]
        values.append(nested)
    return values


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON: numbers by decimal value (jsonb writes 1e308 back as the integer)."""
    if msgspec.json.encode(a) == msgspec.json.encode(b):
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, int | float) and isinstance(b, int | float):
        return Decimal(repr(a)) == Decimal(repr(b))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return all(_same_json(a[k], b[k]) for k in a)
    return bool(a == b)


async def hostile(url: str, count: int) -> str:
    rng = random.Random(7)
    refused = stored = wrong = 0
    async with client(url, "owfault_hostile") as ow:
        await ow.connect()
        for value in hostile_values(rng, count):
            try:
                handle = await ow.start("echo", value)
            except ow_es.ValidationError:
                refused += 1
                continue
            same = _same_json((await handle.status()).input, value)
            stored += same
            wrong += not same
        for name in ("n" * 1001, "a\x00b", "\udc00"):
            try:
                await ow.start(name)
                wrong += 1
            except ow_es.ValidationError:
                refused += 1
        rows = len((await ow.list_runs(limit=1000)).runs)
    return (
        f"hostile input: {refused} refused with a ValidationError, {stored} stored and read"
        f" back unchanged, {wrong} otherwise; {rows} runs written (= those stored)"
    )


async def shutdown(url: str) -> str:
    async with client(url, "owfault_stop") as ow:
        in_flight = asyncio.Event()
        thread_may_end = threading.Event()

        @ow.workflow(name="stop-async")
        async def stop_async(ctx: ow_es.Context) -> None:
            async def wait() -> None:
                in_flight.set()
                await asyncio.sleep(60)

            await ctx.step.run("wait", wait)

        @ow.workflow(name="stop-sync")
        async def stop_sync(ctx: ow_es.Context) -> None:
            await ctx.step.run("block", lambda: thread_may_end.wait(60))

        await ow.connect()
        handles = [await stop_async.start(), await stop_sync.start()]
        worker = ow.worker(stop_timeout="30s", poll_interval="200ms")
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(in_flight.wait(), 15)
        await asyncio.sleep(0.3)  # the sync step is in its thread too
        began = time.perf_counter()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        took = time.perf_counter() - began
        thread_may_end.set()
        released = 0
        for handle in handles:
            released += (await ow.history(handle.run_id))[-1].type == "run_released"
    return (
        f"shutdown: cancelling worker.run() with an async and a sync step in flight returned"
        f" in {took * 1000:.0f} ms (stop timeout 30 s); {released} of 2 runs handed back"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument(
        "--only", default="kills300,kills20,hostile,shutdown", help="scenarios, comma-separated"
    )
    args = parser.parse_args()
    url, only = args.database_url, args.only.split(",")
    if "kills300" in only:
        print(await kills(url, 300, args.runs, budget=60), flush=True)
    if "kills20" in only:
        print(await kills(url, 20, args.runs, budget=20), flush=True)
    if "hostile" in only:
        print(await hostile(url, 200), flush=True)
    if "shutdown" in only:
        print(await shutdown(url), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
