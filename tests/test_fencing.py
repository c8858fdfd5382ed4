"""Fencing: a writer that lost its claim can write nothing more: stale claim tokens and
expected seqs are refused in the store, and a real worker process frozen (SIGSTOP) past its
lease and thawed after another took its run over writes nothing and starts no new step."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import psycopg
import pytest
from psycopg import sql

import ow_es
from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.store import Appended, AppendRequest
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

WF = "fenced"
KEYS = [(WF, None)]


def _step_done(name: str, worker: str, output: object = 1) -> ev.StepCompleted:
    return ev.StepCompleted(
        step_name=name,
        kind="function",
        attempt=1,
        output=output,
        started_at=utcnow(),
        worker_id=worker,
    )


async def _take_over(ow: ow_es.OpenWorkflow, run_id: str) -> tuple[str, str]:
    """Claim ``run_id`` with a short lease, let it expire and claim it again: the old and
    the new claim token."""
    (first,) = [r for r in await ow.store.claim("worker-1", KEYS, 10, 0.2) if r.id == run_id]
    taken: list[ow_es.WorkflowRun] = []

    async def reclaimed() -> bool:
        taken.extend(r for r in await ow.store.claim("worker-2", KEYS, 10, 30) if r.id == run_id)
        return bool(taken)

    await eventually(reclaimed, timeout=5)
    assert first.claim_token and taken[0].claim_token
    return first.claim_token, taken[0].claim_token


async def test_stale_claim_token_is_rejected_and_writes_nothing(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    old, new = await _take_over(ow, handle.run_id)
    before_events = await ow.history(handle.run_id)
    before_row = await handle.status()

    (outcome,) = await ow.store.append(
        [AppendRequest(run_id=handle.run_id, claim_token=old, events=[_step_done("s", "w1")])]
    )
    assert isinstance(outcome, ow_es.ConcurrencyError)
    assert await ow.history(handle.run_id) == before_events
    after_row = await handle.status()
    assert after_row.seq == before_row.seq
    assert after_row.claim_token == new and after_row.worker_id == "worker-2"
    assert await ow.store.step_attempts(handle.run_id) == []

    # The current owner's write goes through.
    (ok,) = await ow.store.append(
        [AppendRequest(run_id=handle.run_id, claim_token=new, events=[_step_done("s", "w2")])]
    )
    assert isinstance(ok, Appended)
    assert ok.run.seq == before_row.seq + 1
    steps = await ow.store.step_attempts(handle.run_id)
    assert [(s.step_name, s.status) for s in steps] == [("s", "completed")]


async def test_batch_with_a_stale_member_commits_the_valid_one(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    stale_run = await ow.start(WF, {"n": "stale"})
    old, _ = await _take_over(ow, stale_run.run_id)
    valid_run = await ow.start(WF, {"n": "valid"})
    (claimed,) = await ow.store.claim("worker-3", KEYS, 10, 30)
    assert claimed.id == valid_run.run_id and claimed.claim_token
    stale_before = await ow.history(stale_run.run_id)

    outcomes = await ow.store.append(
        [
            AppendRequest(
                run_id=stale_run.run_id, claim_token=old, events=[_step_done("a", "worker-1")]
            ),
            AppendRequest(
                run_id=valid_run.run_id,
                claim_token=claimed.claim_token,
                events=[_step_done("a", "worker-3", output="kept")],
            ),
        ]
    )
    assert isinstance(outcomes[0], ow_es.ConcurrencyError)
    assert isinstance(outcomes[1], Appended)
    assert await ow.history(stale_run.run_id) == stale_before
    valid_events = await ow.history(valid_run.run_id)
    assert valid_events[-1].type == "step_completed"
    assert valid_events[-1].data["output"] == "kept"
    assert [e.seq for e in valid_events] == list(range(1, len(valid_events) + 1))


async def test_batch_with_stale_and_current_writes_to_one_run(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    old, new = await _take_over(ow, handle.run_id)
    outcomes = await ow.store.append(
        [
            AppendRequest(run_id=handle.run_id, claim_token=old, events=[_step_done("x", "w1")]),
            AppendRequest(run_id=handle.run_id, claim_token=new, events=[_step_done("y", "w2")]),
        ]
    )
    assert isinstance(outcomes[0], ow_es.ConcurrencyError)
    assert isinstance(outcomes[1], Appended)
    steps = [e.data.get("step_name") for e in await ow.history(handle.run_id)]
    assert "x" not in steps and "y" in steps


async def test_writes_under_the_claim_of_a_canceled_run_are_rejected(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    (run,) = await ow.store.claim("worker-1", KEYS, 1, 30)
    await handle.cancel()
    before = await ow.history(handle.run_id)
    (outcome,) = await ow.store.append(
        [
            AppendRequest(
                run_id=handle.run_id,
                claim_token=run.claim_token,
                events=[ev.RunCompleted(output="too late", worker_id="worker-1")],
            )
        ]
    )
    assert isinstance(outcome, ow_es.ConcurrencyError | ow_es.InvalidTransition)
    assert await ow.history(handle.run_id) == before
    assert (await handle.status()).status == "canceled"
    assert await ow.store.heartbeat({handle.run_id: str(run.claim_token)}, 30) == set()


async def test_expected_seq_rejects_a_write_over_unseen_events(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    (run,) = await ow.store.claim("worker-1", KEYS, 1, 30)
    # Something else lands on the run (an event that does not revoke the claim).
    (other,) = await ow.store.append(
        [AppendRequest(run_id=handle.run_id, events=[ev.RunWoken(reason="operator")])]
    )
    assert isinstance(other, Appended)
    before = await ow.history(handle.run_id)
    (outcome,) = await ow.store.append(
        [
            AppendRequest(
                run_id=handle.run_id,
                claim_token=run.claim_token,
                expected_seq=run.seq,
                events=[_step_done("s", "worker-1")],
            )
        ]
    )
    assert isinstance(outcome, ow_es.ConcurrencyError)  # StaleRun is a ConcurrencyError
    assert await ow.history(handle.run_id) == before


async def test_every_event_has_a_gapless_seq_under_concurrent_appends(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    (run,) = await ow.store.claim("worker-1", KEYS, 1, 30)

    async def write(i: int) -> None:
        (outcome,) = await ow.store.append(
            [
                AppendRequest(
                    run_id=handle.run_id,
                    claim_token=run.claim_token,
                    events=[_step_done(f"s{i}", "worker-1", output=i)],
                )
            ]
        )
        assert isinstance(outcome, Appended)

    await asyncio.gather(*(write(i) for i in range(20)))
    events = await ow.history(handle.run_id)
    assert [e.seq for e in events] == list(range(1, 23))
    assert (await handle.status()).seq == 22
    positions = [e.position for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


# -- real worker processes, frozen past their lease -------------------------------------------

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


@pytest.mark.slow
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
        first.send(signal.SIGCONT)
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


@pytest.mark.slow
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
        first.send(signal.SIGSTOP)  # its commit is sent; only the reply is pending
        admin.execute("SELECT pg_advisory_unlock(%s)", [HOLD_KEY])
        await eventually(
            lambda: _history_has(ow, run_id, "step_completed", step_name="a"),
            10,
            "the commit of a landed while its worker is frozen",
        )
        second = fleet.spawn(concurrency=2)
        assert await handle.result(timeout=30) == [0, 0, 0]
        first.send(signal.SIGCONT)
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
