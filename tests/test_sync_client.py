"""``ow_es.sync``: the client calls for blocking code, backed by the async client, used from
plain threads (as a web server's request threads would) with signals, children, cancel and
resume."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import ow_es
import ow_es.sync
from tests.support.runs import parked
from tests.support.waiting import eventually
from tests.support.workers import running_worker


def test_sync_client_start_result_history_and_errors(db: dict[str, Any]) -> None:
    stop = threading.Event()
    ready = threading.Event()

    def serve() -> None:  # an async worker in its own thread, as a separate service would be
        async def main() -> None:
            ow = ow_es.OpenWorkflow(db["url"], schema=db["schema"])

            @ow.workflow(name="double")
            async def double(ctx: ow_es.Context, n: int) -> int:
                return await ctx.step.run("x2", lambda: n * 2)

            @ow.workflow(name="boom")
            async def boom(ctx: ow_es.Context) -> None:
                raise RuntimeError("nope")

            async with ow, running_worker(ow):
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert ready.wait(30)
        with ow_es.sync.connect(db["url"], schema=db["schema"]) as ow:
            handle = ow.start("double", 21)
            assert handle.result(timeout=15) == 42
            assert handle.status().status == "completed"
            assert [e.type for e in ow.history(handle.run_id)][-1] == "run_completed"
            assert ow.state_at(handle.run_id, 1).run.status == "pending"
            assert ow.get_handle(handle.run_id).run_id == handle.run_id
            assert handle.run_id in [r.id for r in ow.list_runs(status="completed").runs]
            failed = ow.start("boom")
            with pytest.raises(ow_es.WorkflowFailed, match="nope"):
                failed.result(timeout=15)
            with pytest.raises(ow_es.RunNotFound):
                ow.get_handle("missing")
            assert ow.send_signal("nobody-waits", {"x": 1}) == []
            with pytest.raises(ow_es.InvalidTransition):
                handle.cancel()
    finally:
        stop.set()
        thread.join(30)


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
            await eventually(lambda: parked(ow, approval.run_id, "signal"))
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
            await eventually(lambda: parked(ow, parent.run_id, "child"))
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
