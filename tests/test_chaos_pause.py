"""Chaos: a worker process is frozen (SIGSTOP) past its lease while another takes its run
over, then thawed (SIGCONT). The thawed worker must not write to the run again, must not run
any of its code again, and the run completes exactly once under the new owner."""

from __future__ import annotations

import os
import signal
from typing import Any

import psycopg
from psycopg import sql

import ow_es
from tests.support.auditors import (
    audit_log,
    claims_of,
    describe,
    pid_of,
    read_executions,
)
from tests.support.fleet import Fleet
from tests.support.processes import Process, Processes
from tests.support.waiting import eventually

DROPPED = ("lease lost", "claim lost", "another claim")
HOLD_KEY = 0x0C4A05


def _ran(fleet: Fleet, run_id: str) -> dict[str, list[int]]:
    steps: dict[str, list[int]] = {}
    for step, pid, _ in read_executions(fleet.state, run_id):
        steps.setdefault(step, []).append(pid)
    return steps


async def _history_has(ow: ow_es.OpenWorkflow, run_id: str, type_: str, **data: Any) -> bool:
    return any(
        e.type == type_ and all(e.data.get(k) == v for k, v in data.items())
        for e in await ow.history(run_id)
    )


async def _claimed_by(ow: ow_es.OpenWorkflow, run_id: str, proc: Process) -> bool:
    return any(pid_of(c.data["worker_id"]) == proc.pid for c in claims_of(await ow.history(run_id)))


def _commit_waits(fleet: Fleet, proc: Process) -> bool:
    sessions = fleet.pg_sessions(proc)
    # The commit of a pipelined transaction, or of a one-statement append (autocommit).
    return any(
        s["wait_event_type"] == "Lock"
        and (s["query"] == "COMMIT" or "INSERT INTO events" in s["query"])
        for s in sessions
    )


async def test_thawed_worker_writes_nothing_after_a_takeover(
    make_client: Any, db: dict[str, Any], processes: Processes
) -> None:
    ow = await make_client()
    await ow.connect()
    fleet = Fleet(db, processes)
    (fleet.state / "open-a-0").touch()  # the frozen worker holds step "b", not "a"
    try:
        first = fleet.spawn(concurrency=2, env={"CHAOS_GATED": "1"})
        await fleet.ready(first)
        handle = await ow.start("relay", 0)
        run_id = handle.run_id
        # "b" is running in the first worker and its start is recorded.
        await eventually(lambda: _ran(fleet, run_id).get("b"), 20, "b started")
        await eventually(
            lambda: _history_has(ow, run_id, "step_started", step_name="b"), 10, "b recorded"
        )
        await fleet.pause_outside_transactions(first)
        # The second worker is slow in "b": the first thaws while the run is the second's.
        second = fleet.spawn(concurrency=2, env={"CHAOS_B_SECONDS": "1.0"})
        await eventually(lambda: _claimed_by(ow, run_id, second), 20, "takeover")
        (fleet.state / "open-b-0").touch()  # the frozen "b" can finish as soon as it thaws
        os.kill(first.pid, signal.SIGCONT)
        assert await handle.result(timeout=30) == [0, 0, 0]
        # The thawed worker notices it lost the run (heartbeat or fenced append) and drops it.
        await eventually(lambda: any(m in first.text() for m in DROPPED), 10, "first dropped it")
        alive = first.alive()
    finally:
        codes = fleet.stop_all()
    assert alive, first.text()
    assert codes[first.pid] == 0, first.text()

    events = await ow.history(run_id)
    assert audit_log(events) == [], describe(events)
    claims = [pid_of(c.data["worker_id"]) for c in claims_of(events)]
    assert claims == [first.pid, second.pid], describe(events)
    takeover = claims_of(events)[1].seq
    writers = {e.data.get("worker_id") for e in events if e.seq > takeover} - {None}
    assert {pid_of(w) for w in writers} == {second.pid}, describe(events)
    assert [e.type for e in events].count("run_completed") == 1
    # "b" was in flight when the first worker froze: it ran again; nothing else did.
    assert _ran(fleet, run_id) == {
        "a": [first.pid],
        "b": [first.pid, second.pid],
        "c": [second.pid],
    }, describe(events)


async def test_thawed_worker_starts_no_new_step_after_a_takeover(
    pg_db: dict[str, Any], processes: Processes
) -> None:
    """Postgres only (it needs a second session to delay a commit). The worker is frozen
    just after it sent the commit of step "a"'s completion; the commit lands while it is
    frozen, its lease runs out, another worker finishes the run. When the frozen worker
    thaws it learns that "a" was recorded, and it must not go on to run step "b": its lease
    is long gone and the run belongs to (indeed was completed by) another worker."""
    db = pg_db
    ow = await ow_es.connect(db["url"], schema=db["schema"])
    fleet = Fleet(db, processes)
    admin = psycopg.connect(db["url"], autocommit=True)
    try:
        first = fleet.spawn(concurrency=2, env={"CHAOS_GATED": "1"})
        await fleet.ready(first)
        handle = await ow.start("relay", 0)
        run_id = handle.run_id
        await eventually(lambda: _ran(fleet, run_id).get("a"), 20, "a started")
        await eventually(
            lambda: _history_has(ow, run_id, "step_started", step_name="a"), 10, "a recorded"
        )
        # A slow commit (think: a synchronous replica lagging): a deferred trigger makes
        # the commit of a step completion wait for a lock the test holds.
        schema = sql.Identifier(db["schema"])
        admin.execute(
            sql.SQL(
                "CREATE FUNCTION {}.chaos_hold() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_advisory_xact_lock_shared({}); RETURN NULL; END $$"
            ).format(schema, sql.Literal(HOLD_KEY))
        )
        admin.execute(
            sql.SQL(
                "CREATE CONSTRAINT TRIGGER chaos_hold AFTER INSERT ON {}.events"
                " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
                " WHEN (NEW.type = 'step_completed') EXECUTE FUNCTION {}.chaos_hold()"
            ).format(schema, schema)
        )
        admin.execute("SELECT pg_advisory_lock(%s)", [HOLD_KEY])
        (fleet.state / "open-a-0").touch()
        await eventually(
            lambda: _commit_waits(fleet, first),
            10,
            "the commit of a's completion waits",
        )
        os.kill(first.pid, signal.SIGSTOP)  # its commit is sent; only the reply is pending
        admin.execute("SELECT pg_advisory_unlock(%s)", [HOLD_KEY])
        await eventually(
            lambda: _history_has(ow, run_id, "step_completed", step_name="a"),
            10,
            "the commit of a landed while its worker is frozen",
        )
        second = fleet.spawn(concurrency=2)
        assert await handle.result(timeout=30) == [0, 0, 0]
        os.kill(first.pid, signal.SIGCONT)
        await eventually(lambda: any(m in first.text() for m in DROPPED), 10, "first dropped it")
        events = await ow.history(run_id)
    finally:
        admin.close()
        fleet.stop_all()
        await ow.close()

    assert audit_log(events) == [], describe(events)
    ran = _ran(fleet, run_id)
    assert ran["a"] == [first.pid]
    assert ran.get("b") == [second.pid] and ran.get("c") == [second.pid], (
        f"after the takeover the thawed worker {first.pid} ran {ran} (second: {second.pid})\n"
        + describe(events)
    )
