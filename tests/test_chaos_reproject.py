"""Chaos: the projections are rebuilt and swapped in (``reproject``) again and again while
real worker processes work through a backlog, one of them is SIGKILLed and runs are
canceled mid-flight. Running workers must not notice the swaps: nothing is lost or stranded,
the log keeps one owner at a time, and the swapped-in tables still match the log."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import ow_es
from tests.support.auditors import (
    audit_attempts,
    audit_executions,
    audit_log,
    describe,
    read_executions,
    statuses,
)
from tests.support.fleet import Fleet
from tests.support.processes import Processes
from tests.support.waiting import eventually


async def test_reproject_swaps_during_kills_and_cancels_lose_nothing(
    make_client: Any, db: dict[str, Any], processes: Processes
) -> None:
    total = 50
    seed = time.time_ns() % 100_000
    rng = random.Random(seed)
    ow = await make_client()
    await ow.connect()
    fleet = Fleet(db, processes)
    canceled: set[str] = set()
    swaps = 0
    try:
        handles = [await ow.start("chaos", n) for n in range(total)]
        for _ in range(2):
            fleet.spawn()
        await eventually(lambda: len(list(fleet.state.glob("exec-*"))) >= 4, 20, "work started")
        for round_ in range(4):
            await asyncio.sleep(rng.uniform(0.3, 0.6))
            report = await ow.reproject()
            swaps += report.swapped
            if round_ == 1:
                fleet.kill(rng.choice(fleet.live()))
                fleet.spawn()
            if round_ in (0, 2):
                for handle in rng.sample(handles, 4):
                    try:
                        await handle.cancel()
                        canceled.add(handle.run_id)
                    except ow_es.InvalidTransition:
                        pass  # it had finished already

        async def settled() -> bool:
            counts = await statuses(ow)
            return counts["pending"] + counts["running"] == 0

        await eventually(settled, 60, "every run finished")
    finally:
        codes = fleet.stop_all()
    assert set(codes.values()) == {0}, (codes, fleet.logs())
    assert swaps == 4
    counts = await statuses(ow)
    assert counts == {"completed": total - len(canceled), "canceled": len(canceled)}, (
        f"seed {seed}",
        counts,
        fleet.logs(),
    )

    problems: list[str] = []
    evidence: list[str] = []
    for n, handle in enumerate(handles):
        events = await ow.history(handle.run_id)
        found = [
            *audit_log(events),
            *audit_attempts(events, await ow.store.step_attempts(handle.run_id)),
        ]
        if handle.run_id in canceled:
            if events[-1].type != "run_canceled":
                found.append(f"the log goes on after the cancel: {events[-1].type}")
        else:
            executions = read_executions(fleet.state, handle.run_id)
            found += audit_executions(events, executions, fleet.killed)
            if (await handle.status()).output != [n, 2 * n, 3 * n, 4 * n, 5 * n]:
                found.append("wrong output")
        problems += [f"run {n} ({handle.run_id}): {p}" for p in found]
        if found and len(evidence) < 3:
            evidence.append(f"run {n}:\n{describe(events)}")
    assert not problems, "\n".join([f"seed {seed}:", *problems[:40], *evidence])
    report = await ow.reproject(verify=True)
    assert report.differences == [], report.differences[:10]
