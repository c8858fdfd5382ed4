"""History: the whole log of a run, its state as of any event (``state_at``, with every
shape of ``waiting_for``), old events upcast, an abandoned attempt closed."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

import msgspec
import psycopg
import pytest

import ow_es
from tests.support.runs import parked
from tests.support.waiting import eventually
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
    parked_state = await ow.state_at(handle.run_id, failed_at + 1)
    waiting = parked_state.run.waiting_for
    assert waiting is not None and waiting["kind"] == "retry"
    assert waiting["step"] == "flaky"
    assert waiting["until"].tzinfo is not None  # a datetime, as all times are
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


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


async def test_waiting_for_shapes_in_history_and_state_at(ow: ow_es.OpenWorkflow) -> None:
    failures = {"n": 0}

    @ow.workflow(name="shape-kid")
    async def shape_kid(ctx: ow_es.Context) -> str:
        got: str = await ctx.step.wait_for_signal("kid-go", timeout="20s")
        return got

    @ow.workflow(name="shapes")
    async def shapes(ctx: ow_es.Context) -> Any:
        def flaky() -> str:
            failures["n"] += 1
            if failures["n"] == 1:
                raise ConnectionError("once")
            return "ok"

        await ctx.step.run("flaky", flaky, retry=ow_es.RetryPolicy(initial_interval="50ms"))
        await ctx.step.sleep("nap", "50ms")
        signal = await ctx.step.wait_for_signal("approve", timeout="20s")
        child = await ctx.step.run_workflow(shape_kid, None)
        return [signal, child]

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        handle = await shapes.start()
        await eventually(lambda: parked(ow, handle.run_id, "signal", name="approve"))
        assert await ow.send_signal("approve", "A") == [handle.run_id]
        await eventually(lambda: parked(ow, handle.run_id, "child"))
        (child,) = await ow.store.list_children(handle.run_id)
        live = (await handle.status()).waiting_for
        assert live is not None and live["run_id"] == child.id
        await eventually(lambda: parked(ow, child.id, "signal", name="kid-go"))
        assert await ow.send_signal("kid-go", "K") == [child.id]
        assert await handle.result(timeout=15) == ["A", "K"]

    events = await ow.history(handle.run_id)
    seen: dict[str, dict[str, Any]] = {}
    for event in events:
        state = await ow.state_at(handle.run_id, event.seq)
        assert state.run.seq == event.seq
        wf = state.run.waiting_for
        if event.type == "retry_scheduled":
            assert wf is not None and wf["kind"] == "retry" and wf["step"] == "flaky"
            assert _as_datetime(wf["until"]) == _as_datetime(event.data["until"])
        elif event.type == "run_sleeping":
            assert wf is not None and wf["kind"] == "sleep"
            assert _as_datetime(wf["until"]) == _as_datetime(event.data["until"])
        elif event.type == "run_waiting":
            assert wf is not None and wf["kind"] in ("signal", "child")
            if wf["kind"] == "signal":
                assert wf["name"] == "approve"
            else:
                assert wf["run_id"] == child.id
        elif event.type in ("run_claimed", "signal_received", "child_finished", "run_completed"):
            assert wf is None, (event.type, wf)
        if wf is not None:
            assert state.run.status == "running" and state.run.worker_id is None
            assert state.run.lease_until is None
            seen[wf["kind"]] = wf
    assert set(seen) == {"retry", "sleep", "signal", "child"}
    received = next(e for e in events if e.type == "signal_received")
    at_receipt = await ow.state_at(handle.run_id, received.seq)
    wait = next(s for s in at_receipt.steps if s.step_name == "approve")
    assert (wait.kind, wait.status, wait.output) == ("signal_wait", "completed", "A")
    finished = next(e for e in events if e.type == "child_finished")
    assert finished.data["child_run_id"] == child.id and finished.data["status"] == "completed"
    final = await ow.state_at(handle.run_id, events[-1].seq)
    assert msgspec.structs.replace(final.run, lease_until=None) == await handle.status()
