"""``ow_es.sync``: the client calls for blocking code, backed by the async client."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import ow_es
import ow_es.sync
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
