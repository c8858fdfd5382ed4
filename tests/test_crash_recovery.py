"""Crash recovery with real processes: a worker SIGKILLed mid-step is recovered after its lease
expires, and under random SIGKILLs of a fleet nothing is lost, only interrupted steps run
again, the log shows one owner at a time and the projections still match the log."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import ow_es
from tests.support.apps import crash
from tests.support.auditors import (
    audit_attempts,
    audit_executions,
    audit_log,
    describe,
    read_executions,
    statuses,
    takeovers,
)
from tests.support.cli import db_args
from tests.support.fleet import Fleet
from tests.support.processes import Processes
from tests.support.waiting import eventually
from tests.support.workers import running_worker

pytestmark = pytest.mark.slow  # real worker processes


async def test_sigkilled_worker_process_is_recovered(
    ow: ow_es.OpenWorkflow,
    db: dict[str, Any],
    tmp_path: Path,
    processes: Processes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("CRASH_STATE", str(state))  # for the rescuer in this process
    ow.register(crash.victim)  # the same definitions in this process, without blocking
    await ow.connect()
    handle = await ow.start(crash.victim)

    proc = processes.worker(
        "tests.support.apps.crash",
        *("-c", "4", "--lease", "2s", "--poll-interval", "100ms", *db_args(db)),
        env={"CRASH_STATE": str(state), "OW_TEST_BLOCK": "1"},
    )

    async def blocked() -> bool:
        assert proc.alive(), proc.text()
        return (state / "blocked").exists()

    await eventually(blocked, timeout=30, interval=0.05)
    dead_worker = (await proc.serving()).split()[2]  # "ow-es worker <id> serving ..."

    async def recorded() -> bool:
        done = {
            e.data["step_name"]
            for e in await ow.history(handle.run_id)
            if e.type == "step_completed"
        }
        return {"first", "part", "part:1"} <= done

    await eventually(recorded, timeout=10)
    before_kill = await handle.status()
    assert before_kill.status == "running"
    assert before_kill.worker_id == dead_worker
    proc.kill()
    assert proc.returncode == -signal.SIGKILL

    async with running_worker(ow, lease="2s", concurrency=2) as rescuer:
        result = await handle.result(timeout=30)
    assert result == {"first": 1, "parts": [0, 10, 20], "last": "last"}

    # Completed before the kill: run once. Interrupted: run again. After: run once.
    assert crash.count(state, "first") == 1
    assert crash.count(state, "part0") == 1
    assert crash.count(state, "part1") == 1
    assert crash.count(state, "part2") == 2
    assert crash.count(state, "last") == 1

    events = await ow.history(handle.run_id)
    claims = [e for e in events if e.type == "run_claimed"]
    assert [c.data["worker_id"] for c in claims] == [dead_worker, rescuer.worker_id]
    # The rescuer waited for the lease: no takeover while the dead worker still held it.
    assert before_kill.lease_until is not None
    assert claims[1].created_at >= before_kill.lease_until - timedelta(milliseconds=100)
    # One owner at a time: every worker-written event after the takeover is the rescuer's.
    takeover = claims[1].seq
    writers = {e.data.get("worker_id") for e in events if e.seq > takeover} - {None}
    assert writers == {rescuer.worker_id}
    steps = await ow.store.step_attempts(handle.run_id)
    assert {s.step_name for s in steps if s.status == "completed"} == {
        "first",
        "part",
        "part:1",
        "part:2",
        "last",
    }


# -- a fleet of worker processes, SIGKILLed at random -----------------------------------------

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
