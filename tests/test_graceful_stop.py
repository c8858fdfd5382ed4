"""Chaos: a busy ``ow-es worker`` process gets SIGTERM. Runs that can finish within its stop
timeout finish there; the rest (one of them stuck in a sync step's thread) are released and
another worker completes them at once, long before their 30 s lease would have run out. The
stopped process exits cleanly without waiting for the stuck thread."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from tests.support.auditors import (
    audit_attempts,
    audit_executions,
    audit_log,
    claims_of,
    describe,
    pid_of,
    read_executions,
    statuses,
)
from tests.support.fleet import Fleet
from tests.support.processes import Processes
from tests.support.waiting import eventually

STOP_TIMEOUT = 1.5


async def test_sigterm_finishes_or_releases_in_flight_runs_for_another_worker(
    make_client: Any, db: dict[str, Any], processes: Processes
) -> None:
    ow = await make_client()
    await ow.connect()
    fleet = Fleet(db, processes)
    runs = range(4)  # run 1 holds its "b" in a sync step (a thread that cannot be stopped)
    for n in runs:
        (fleet.state / f"open-a-{n}").touch()
    try:
        first = fleet.spawn(
            concurrency=4,
            lease="30s",
            heartbeat="1s",
            stop_timeout=str(STOP_TIMEOUT),
            env={"CHAOS_GATED": "1"},
        )
        await fleet.ready(first)
        handles = [await ow.start("relay", n) for n in runs]

        async def all_in_b() -> bool:
            for h in handles:
                events = await ow.history(h.run_id)
                if not any(e.type == "step_started" and e.data["step_name"] == "b" for e in events):
                    return False
            return True

        await eventually(all_in_b, 20, "every run is in step b in the first worker")
        second = fleet.spawn(concurrency=4, lease="30s", heartbeat="1s")
        await fleet.ready(second)
        stopped_at = time.monotonic()
        os.kill(first.pid, signal.SIGTERM)
        for n in (0, 2):  # these can finish within the stop timeout
            (fleet.state / f"open-b-{n}").touch()

        async def all_completed() -> bool:
            return (await statuses(ow))["completed"] == len(runs)

        await eventually(all_completed, 25, "every run completed")
        completed_after = time.monotonic() - stopped_at
        await eventually(lambda: not first.alive(), 10, "the stopped worker exited")
        exited_after = time.monotonic() - stopped_at
    finally:
        fleet.stop_all()
    assert first.popen.returncode == 0, first.text()
    # Far sooner than the 30 s lease: the released runs were handed over, not abandoned.
    assert completed_after < STOP_TIMEOUT + 8, (completed_after, fleet.logs())
    # The stuck thread does not hold the process (the CLI leaves without joining it).
    assert exited_after < STOP_TIMEOUT + 8, (exited_after, first.text())

    for n, handle in zip(runs, handles, strict=True):
        events = await ow.history(handle.run_id)
        rows = await ow.store.step_attempts(handle.run_id)
        executions = read_executions(fleet.state, handle.run_id)
        where = f"run {n}:\n{describe(events)}"
        assert audit_log(events) == [], where
        assert audit_attempts(events, rows) == [], where
        assert audit_executions(events, executions, {first.pid}) == [], where
        assert (await handle.status()).output == [n, 2 * n, 3 * n], where
        claimants = [pid_of(c.data["worker_id"]) for c in claims_of(events)]
        released = [e for e in events if e.type == "run_released"]
        ran = {step: [pid for s, pid, _ in executions if s == step] for step in "abc"}
        if n % 2 == 0:  # finished by the stopping worker within its stop timeout
            assert claimants == [first.pid] and not released, where
            assert ran == {"a": [first.pid], "b": [first.pid], "c": [first.pid]}, where
        else:  # released by the stopping worker, completed by the other one
            assert claimants == [first.pid, second.pid], where
            assert len(released) == 1 and pid_of(released[0].data["worker_id"]) == first.pid
            takeover = claims_of(events)[1]
            assert released[0].seq < takeover.seq, where
            handover = (takeover.created_at - released[0].created_at).total_seconds()
            assert handover < 5, f"the released run waited {handover:.1f}s\n{where}"
            assert ran == {"a": [first.pid], "b": [first.pid, second.pid], "c": [second.pid]}, where
