"""Limited workflows, served by ``ow-es worker tests.support.apps.limited`` processes in the
multi-process flow control tests; runs are started by name from the test process."""

from __future__ import annotations

import asyncio

import ow_es


@ow_es.workflow(name="at-most-three", limits=ow_es.Limits(concurrency=3))
async def at_most_three(ctx: ow_es.Context, n: int) -> int:
    await asyncio.sleep(0.1)  # held while it runs
    return n


@ow_es.workflow(name="one-per-key", limits=ow_es.Limits(per_key=1))
async def one_per_key(ctx: ow_es.Context, n: int) -> int:
    await asyncio.sleep(0.1)
    return n


@ow_es.workflow(name="ten-per-second", limits=ow_es.Limits(rate="10/1s"))
async def ten_per_second(ctx: ow_es.Context, n: int) -> int:
    return n


@ow_es.workflow(name="by-priority")
async def by_priority(ctx: ow_es.Context, n: int) -> int:
    await asyncio.sleep(0.05)
    return n
