"""Chaos: real worker processes are SIGKILLed at random while they work through a backlog,
and replaced. Afterwards every run is complete, each step ran again only where its worker
died with it in flight, the log shows one owner at a time, every attempt has its row, and a
rebuild of the projections from the log matches the live tables."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from tests.support.auditors import (
    audit_attempts,
    audit_executions,
    audit_log,
    describe,
    read_executions,
    statuses,
    takeovers,
)
from tests.support.fleet import Fleet
from tests.support.processes import Processes
from tests.support.waiting import eventually

STEPS = {"a", "b", "c", "d", "nap", "e"}  # the chaos workflow's steps


async def test_random_sigkills_lose_nothing_and_rerun_only_interrupted_steps(
    make_client: Any, db: dict[str, Any], processes: Processes
) -> None:
    postgres = db["backend"] == "postgres"
    total, workers, kills = (100, 3, 6) if postgres else (40, 2, 4)
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    ow = await make_client()
    await ow.connect()
    fleet = Fleet(db, processes)
    try:
        handles = [await ow.start("chaos", n) for n in range(total)]
        for _ in range(workers):
            fleet.spawn()
        await eventually(
            lambda: len(list(fleet.state.glob("exec-*"))) >= workers,
            20,
            "workers started executing steps\n" + fleet.logs(),
        )
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.5, 1.0))
            if (await statuses(ow))["completed"] == total:
                break
            fleet.kill(rng.choice(fleet.live()))
            fleet.spawn()

        async def all_completed() -> bool:
            return (await statuses(ow))["completed"] == total

        try:
            await eventually(all_completed, 60, "every run completed")
        except AssertionError:
            raise AssertionError(f"seed {seed}: {await statuses(ow)}\n{fleet.logs()}") from None
    finally:
        codes = fleet.stop_all()
    # Survivors stop gracefully on SIGTERM; nobody crashed on its own.
    assert codes and set(codes.values()) == {0}, (codes, fleet.logs())
    assert "executor crashed" not in fleet.logs()

    problems: list[str] = []
    evidence: list[str] = []
    taken = reruns = 0
    for n, handle in enumerate(handles):
        run = await handle.status()
        if run.output != [n, 2 * n, 3 * n, 4 * n, 5 * n]:
            problems.append(f"run {n}: output {run.output}")
        events = await ow.history(handle.run_id)
        rows = await ow.store.step_attempts(handle.run_id)
        executions = read_executions(fleet.state, handle.run_id)
        taken += takeovers(events)
        reruns += len(executions) - len({step for step, _, _ in executions}) - 1  # e fails once
        found = [
            *audit_log(events),
            *audit_attempts(events, rows),
            *audit_executions(events, executions, fleet.killed),
        ]
        if {e.data.get("step_name") for e in events if e.type == "step_completed"} != STEPS:
            found.append("not every step completed")
        problems += [f"run {n} ({handle.run_id}): {p}" for p in found]
        if found and len(evidence) < 3:
            evidence.append(f"run {n} ({handle.run_id}):\n{describe(events)}")
    assert not problems, "\n".join([f"seed {seed}:", *problems[:40], *evidence, fleet.logs()])
    # The chaos hit: some runs were taken over from a killed worker.
    assert taken > 0, f"seed {seed}: no run was ever taken over; the kills missed"

    print(f"seed {seed}: {len(fleet.killed)} kills, {taken} takeovers, {reruns} reruns")
    report = await ow.reproject(verify=True)
    assert report.differences == [], report.differences[:10]
