"""Poison runs end and bad data stays contained: an executor that keeps crashing on a run
fails it instead of reclaiming it forever; a history that cannot be read hands the run back at
once; one member's refused data does not fail the others of its group commit."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

import ow_es
from ow_es import events as ev
from ow_es.runtime.committer import GroupCommitter
from ow_es.runtime.executor import Execution
from ow_es.store import Appended, AppendRequest
from tests.support.runs import event_types
from tests.support.workers import running_worker


async def test_an_executor_that_keeps_crashing_fails_the_run(
    ow: ow_es.OpenWorkflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each crash hands the run back with the error; after ``max_crashes`` in a row the run
    fails with ``ExecutorCrashed`` instead of being claimed again and again."""

    @ow.workflow(name="crashing")
    async def crashing(ctx: ow_es.Context) -> int:
        return 1

    async def broken(self: Execution, output: Any) -> None:
        raise RuntimeError("a bug in the executor")

    monkeypatch.setattr(Execution, "_complete", broken)
    await ow.connect()
    handle = await crashing.start()
    async with running_worker(ow, max_crashes=3):
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await handle.result(timeout=20)
    assert info.value.error_type == "ExecutorCrashed"
    assert "3 times in a row" in info.value.error_message
    assert "a bug in the executor" in info.value.error_message
    events = await ow.history(handle.run_id)
    released = [e for e in events if e.type == "run_released"]
    assert len(released) == 3
    assert all(e.data["error"]["type"] == "RuntimeError" for e in released)
    assert [e.type for e in events].count("run_claimed") == 4  # the fourth claim fails it


async def test_a_history_that_cannot_be_read_hands_the_run_back_at_once(
    ow: ow_es.OpenWorkflow,
) -> None:
    @ow.workflow(name="napper")
    async def napper(ctx: ow_es.Context) -> str:
        await ctx.step.sleep("nap", "50ms")
        return "rested"

    await ow.connect()
    store = ow.store
    real_read = store.read_run_events
    failures = {"left": 1}

    async def read_run_events(run_id: str, after: int = 0) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise ow_es.StoreUnavailable("simulated: the read failed")
        return await real_read(run_id, after)

    store.read_run_events = read_run_events  # type: ignore[method-assign]
    handle = await napper.start()
    async with running_worker(ow, lease="30s"):
        # Long before the 30 s lease would run out: handed back, claimed again, finished.
        assert await handle.result(timeout=10) == "rested"
    assert failures["left"] == 0
    events = await ow.history(handle.run_id)
    reasons = [e.data["reason"] for e in events if e.type == "run_released"]
    assert reasons == ["its history could not be read"]


async def test_one_members_refused_data_does_not_fail_the_others(pg_url: str) -> None:
    """PostgreSQL's jsonb refuses a NUL character. A request that slipped past validation
    with one fails alone; the others of its group commit are written."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    ow = await ow_es.connect(pg_url, schema=schema)
    try:
        committer = GroupCommitter(ow.store)

        def create(value: Any) -> AppendRequest:
            event = ev.RunCreated(workflow_name="wf", input=value, available_at=datetime.now(UTC))
            return AppendRequest(run_id=uuid.uuid4().hex, events=[event])

        requests = [create({"n": 1}), create("nul\x00here"), create({"n": 3})]
        results = await asyncio.gather(
            *(committer.submit(r) for r in requests), return_exceptions=True
        )
        assert isinstance(results[0], Appended) and isinstance(results[2], Appended)
        assert isinstance(results[1], ow_es.ValidationError), results[1]
        assert await event_types(ow, requests[0].run_id) == ["run_created"]
        assert await ow.store.get_run(requests[1].run_id) is None
        assert await event_types(ow, requests[2].run_id) == ["run_created"]
    finally:
        await ow.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
