"""Adversarial: ``ow_es.sync`` used from plain threads (as a web server's request threads
would), with signals, children, cancel and resume."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import ow_es
import ow_es.sync
from tests.support.waiting import eventually
from tests.support.workers import running_worker


async def _parked(client: ow_es.OpenWorkflow, run_id: str, kind: str) -> bool:
    run = await client.store.get_run(run_id)
    return bool(run and run.worker_id is None and (run.waiting_for or {}).get("kind") == kind)


async def test_sync_client_shared_by_many_threads(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    @ow.workflow(name="sq")
    async def sq(ctx: ow_es.Context, n: int) -> int:
        return await ctx.step.run("sq", lambda: n * n)

    await ow.connect()
    async with running_worker(ow, concurrency=8):

        def blocking() -> list[int]:
            with ow_es.sync.connect(db["url"], schema=db["schema"]) as client:

                def one(n: int) -> int:
                    handle = client.start("sq", n, idempotency_key=f"sq-{n}")
                    value = handle.result(timeout=20)
                    assert handle.status().status == "completed"
                    assert client.history(handle.run_id)[-1].type == "run_completed"
                    return int(value)

                with ThreadPoolExecutor(max_workers=6) as pool:
                    values = list(pool.map(one, range(24)))
                # The same keys again, from other threads: the same runs, nothing new.
                with ThreadPoolExecutor(max_workers=6) as pool:
                    again = list(pool.map(one, range(24)))
                assert again == values
                return values

        values = await asyncio.to_thread(blocking)
    assert values == [n * n for n in range(24)]
    assert len((await ow.list_runs(workflow_name="sq", limit=100)).runs) == 24


async def test_sync_client_signals_cancel_and_resume(
    ow: ow_es.OpenWorkflow, db: dict[str, Any]
) -> None:
    healthy = {"value": False}

    @ow.workflow(name="sync-kid")
    async def sync_kid(ctx: ow_es.Context) -> Any:
        return await ctx.step.wait_for_signal("never", timeout="1m")

    @ow.workflow(name="sync-parent")
    async def sync_parent(ctx: ow_es.Context) -> Any:
        return await ctx.step.run_workflow(sync_kid, None)

    @ow.workflow(name="sync-approval")
    async def sync_approval(ctx: ow_es.Context) -> Any:
        data = await ctx.step.wait_for_signal("approve", timeout="30s")

        def check() -> str:
            if not healthy["value"]:
                raise ow_es.NonRetryableError("not healthy")
            return f"approved by {data['by']}"

        return await ctx.step.run("check", check)

    await ow.connect()
    client = await asyncio.to_thread(ow_es.sync.connect, db["url"], schema=db["schema"])
    try:
        async with running_worker(ow, concurrency=4):
            approval = await asyncio.to_thread(client.start, "sync-approval")
            await eventually(lambda: _parked(ow, approval.run_id, "signal"))
            delivered = await asyncio.to_thread(
                lambda: client.send_signal("approve", {"by": "ada"}, idempotency_key="s-1")
            )
            assert delivered == [approval.run_id]
            again = await asyncio.to_thread(
                lambda: client.send_signal("approve", {"by": "bob"}, idempotency_key="s-1")
            )
            assert again == [approval.run_id]
            with pytest.raises(ow_es.WorkflowFailed, match="not healthy"):
                await asyncio.to_thread(approval.result, 15)
            healthy["value"] = True
            resumed = await asyncio.to_thread(client.resume, approval.run_id)
            assert await asyncio.to_thread(resumed.result, 15) == "approved by ada"

            parent = await asyncio.to_thread(client.start, "sync-parent")
            await eventually(lambda: _parked(ow, parent.run_id, "child"))
            (kid,) = await ow.store.list_children(parent.run_id)
            await asyncio.to_thread(parent.cancel)  # cascade by default
            assert (await ow.store.get_run(kid.id)).status == "canceled"  # type: ignore[union-attr]
            with pytest.raises(ow_es.WorkflowCanceled):
                await asyncio.to_thread(parent.result, 5)
            # ResultTimeout is a TimeoutError from the sync client too.
            slow = await asyncio.to_thread(client.start, "sync-kid")
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(slow.result, 0.2)
            state = await asyncio.to_thread(client.state_at, approval.run_id, 1)
            assert state.run.status == "pending"
            with pytest.raises(ow_es.RunNotFound):
                await asyncio.to_thread(client.history, "nope")
    finally:
        await asyncio.to_thread(client.close)
