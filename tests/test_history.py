"""Audit: the whole history of a run, its state as of any event, old events upcast."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec
import psycopg
import pytest

import ow_es
from tests.support.workers import running_worker


def _define(ow: ow_es.OpenWorkflow, calls: dict[str, int]) -> Any:
    @ow.workflow(name="audited")
    async def audited(ctx: ow_es.Context, n: int) -> int:
        first = await ctx.step.run("first", lambda: n + 1)

        def flaky() -> int:
            calls["flaky"] = calls.get("flaky", 0) + 1
            if calls["flaky"] < 3:
                raise ConnectionError(f"gateway down #{calls['flaky']}")
            return first * 10

        value = await ctx.step.run("flaky", flaky, retry=ow_es.RetryPolicy(initial_interval="10ms"))
        await ctx.step.sleep("nap", "20ms")
        return value

    return audited


async def test_history_records_every_claim_attempt_and_end(ow: ow_es.OpenWorkflow) -> None:
    audited = _define(ow, {})
    await ow.connect()
    async with running_worker(ow, worker_id="auditor-1") as worker:
        handle = await audited.start(1)
        assert await handle.result(timeout=20) == 20
    events = await ow.history(handle.run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.position for e in events] == sorted(e.position for e in events)
    types = [e.type for e in events]
    assert types[0] == "run_created" and types[-1] == "run_completed"
    claims = [e for e in events if e.type == "run_claimed"]
    assert len(claims) == 4  # first run, two retries, after the sleep
    assert all(c.data["worker_id"] == worker.worker_id and c.data["lease_until"] for c in claims)
    failures = [e for e in events if e.type == "step_failed"]
    assert [f.data["attempt"] for f in failures] == [1, 2]
    assert failures[0].data["error"]["type"] == "ConnectionError"
    assert "gateway down #1" in failures[0].data["error"]["message"]
    assert "Traceback" in failures[0].data["error"]["traceback"]
    assert "run_sleeping" in types and types.count("retry_scheduled") == 2
    # Every event a worker wrote names it: one owner at a time, provably.
    for event in events:
        if event.type not in ("run_created",):
            assert event.data.get("worker_id") in (worker.worker_id, None)
            if event.type in ("run_claimed", "step_failed", "run_completed", "run_sleeping"):
                assert event.data["worker_id"] == worker.worker_id


async def test_state_at_replays_the_run_as_of_each_event(ow: ow_es.OpenWorkflow) -> None:
    audited = _define(ow, {})
    await ow.connect()
    async with running_worker(ow):
        handle = await audited.start(1)
        await handle.result(timeout=20)
    events = await ow.history(handle.run_id)
    first = await ow.state_at(handle.run_id, 1)
    assert first.run.status == "pending" and first.steps == [] and first.run.seq == 1
    failed_at = next(e.seq for e in events if e.type == "step_failed")
    state = await ow.state_at(handle.run_id, failed_at)
    assert state.run.status == "running" and state.run.seq == failed_at
    assert [(s.step_name, s.attempt, s.status) for s in state.steps] == [
        ("first", 1, "completed"),
        ("flaky", 1, "failed"),
    ]
    parked = await ow.state_at(handle.run_id, failed_at + 1)
    assert parked.run.waiting_for is not None and parked.run.waiting_for["kind"] == "retry"
    assert parked.run.waiting_for["step"] == "flaky"
    assert parked.run.waiting_for["until"].tzinfo is not None  # a datetime, as all times are
    final = await ow.state_at(handle.run_id, events[-1].seq)
    live = await handle.status()
    assert msgspec.structs.replace(final.run, lease_until=None) == live
    assert final.steps == await ow.store.step_attempts(handle.run_id)
    with pytest.raises(ow_es.RunNotFound):
        await ow.state_at("missing", 1)


def _insert_raw_event(db: dict[str, Any], run_id: str, seq: int, data: str) -> None:
    """An event exactly as a pre-release ow-es stored it: step_failed v0 had `retry_at`."""
    if db["backend"] == "sqlite":
        with sqlite3.connect(db["url"].removeprefix("sqlite:///")) as conn:
            conn.execute(
                "INSERT INTO events (namespace_id, run_id, seq, type, schema_version, data,"
                " created_at) VALUES ('default', ?, ?, 'step_failed', 0, ?, ?)",
                (run_id, seq, data, "2026-01-01T00:00:00.000000+00:00"),
            )
        return
    with psycopg.connect(db["url"], autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{db["schema"]}".events (namespace_id, run_id, seq, type,'
            " schema_version, data) VALUES ('default', %s, %s, 'step_failed', 0, %s::jsonb)",
            (run_id, seq, data),
        )


async def test_old_format_events_are_upcast(ow: ow_es.OpenWorkflow, db: dict[str, Any]) -> None:
    await ow.connect()
    handle = await ow.start("legacy", None)
    old = (
        '{"step_name": "charge", "attempt": 1, "started_at": "2026-01-01T00:00:00Z",'
        ' "error": {"type": "IOError", "message": "disk", "traceback": ""}, "retry_at": null}'
    )
    _insert_raw_event(db, handle.run_id, 2, old)
    events = await ow.history(handle.run_id)
    assert events[1].type == "step_failed" and events[1].schema_version == 1
    assert events[1].data["final"] is True and "retry_at" not in events[1].data
    assert events[1].data["kind"] == "function"
    state = await ow.state_at(handle.run_id, 2)
    assert [(s.step_name, s.status) for s in state.steps] == [("charge", "failed")]
    # The projections rebuilt from a log holding the old event agree with the fold.
    report = await ow.reproject()
    assert report.swapped
    (step,) = await ow.store.step_attempts(handle.run_id)
    assert (step.step_name, step.status, step.error) == (
        "charge",
        "failed",
        {"type": "IOError", "message": "disk", "traceback": ""},
    )
    assert (await ow.reproject(verify=True)).differences == []


async def test_an_attempt_abandoned_by_a_lost_worker_is_closed_not_counted(
    ow: ow_es.OpenWorkflow,
) -> None:
    from datetime import UTC, datetime

    from ow_es import events as ev
    from ow_es.store import AppendRequest

    @ow.workflow(name="once")
    async def once(ctx: ow_es.Context) -> str:
        # A budget of one attempt: the abandoned attempt must not use it up.
        return await ctx.step.run("a", lambda: "done", retry=ow_es.RetryPolicy(maximum_attempts=1))

    await ow.connect()
    handle = await once.start()
    # A worker claims the run, starts the step, and dies (its lease simply runs out).
    (run,) = await ow.store.claim("dead-worker", [("once", None)], 1, 0.2)
    started = ev.StepStarted(step_name="a", kind="function", attempt=1, worker_id="dead-worker")
    await ow.store.append(
        [AppendRequest(run_id=run.id, claim_token=run.claim_token, events=[started])]
    )
    async with running_worker(ow):
        assert await handle.result(timeout=15) == "done"
    attempts = await ow.store.step_attempts(handle.run_id)
    assert [(s.attempt, s.status) for s in attempts] == [(1, "failed"), (2, "completed")]
    assert attempts[0].error is not None and attempts[0].error["type"] == "WorkerLost"
    abandoned = [e for e in await ow.history(handle.run_id) if e.type == "step_failed"]
    assert abandoned[0].data["abandoned"] is True and abandoned[0].data["final"] is False
    assert abandoned[0].created_at > datetime(2000, 1, 1, tzinfo=UTC)
