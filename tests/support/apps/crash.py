"""The crash app, served by an ``ow-es worker tests.support.apps.crash`` process that the test
SIGKILLs, and then by a worker in the test process: each step execution appends a line to a
per-step file in ``$CRASH_STATE``, so executions can be counted across both. With
``OW_TEST_BLOCK=1`` the third part blocks (and says so in the file ``blocked``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import ow_es


def state() -> Path:
    return Path(os.environ["CRASH_STATE"])


def mark(name: str) -> None:
    with open(state() / f"calls-{name}", "a") as f:
        f.write(f"{os.getpid()}\n")


def count(folder: Path, name: str) -> int:
    """How often step ``name`` ran (``folder`` is the test's ``$CRASH_STATE``)."""
    path = folder / f"calls-{name}"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def first() -> int:
    mark("first")
    return 1


def part(i: int) -> Callable[[], Awaitable[int]]:
    async def fn() -> int:
        mark(f"part{i}")
        if i == 2 and os.environ.get("OW_TEST_BLOCK") == "1":
            (state() / "blocked").write_text(str(os.getpid()))
            await asyncio.sleep(3600)
        return i * 10

    return fn


def last() -> str:
    mark("last")
    return "last"


@ow_es.workflow(name="crash-victim")
async def victim(ctx: ow_es.Context) -> dict[str, Any]:
    one = await ctx.step.run("first", first)
    parts = await asyncio.gather(*(ctx.step.run("part", part(i)) for i in range(3)))
    end = await ctx.step.run("last", last)
    return {"first": one, "parts": list(parts), "last": end}
