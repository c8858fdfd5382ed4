"""Signals: wait_for_signal / send_signal, delivery rules and idempotency."""

from __future__ import annotations

from typing import Any

import ow_es
from tests.support.runs import event_types
from tests.support.waiting import eventually
from tests.support.workers import running_worker


async def _waiting(client: ow_es.OpenWorkflow, run_id: str, name: str = "approved") -> bool:
    run = await client.store.get_run(run_id)
    return bool(run and run.waiting_for and run.waiting_for.get("name") == name)


async def test_wait_parks_frees_the_slot_and_receives_the_data(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="approval")
    async def approval(ctx: ow_es.Context) -> Any:
        data = await ctx.step.wait_for_signal("approved", timeout="1m")
        return {"got": data}

    @ow.workflow(name="quick")
    async def quick(ctx: ow_es.Context) -> str:
        return "done"

    await ow.connect()
    async with running_worker(ow, concurrency=1):
        waiter = await approval.start()
        await eventually(lambda: _waiting(ow, waiter.run_id))
        run = await waiter.status()
        assert run.status == "running" and run.worker_id is None
        assert run.waiting_for is not None and run.waiting_for["kind"] == "signal"
        # The only slot is free while it waits.
        assert await (await quick.start()).result(timeout=10) == "done"
        delivered = await ow.send_signal("approved", {"by": "ada"}, idempotency_key="a-1")
        assert delivered == [waiter.run_id]
        assert await waiter.result(timeout=10) == {"got": {"by": "ada"}}
        # A repeated send with the same key delivers nothing new and returns the same ids.
        assert await ow.send_signal("approved", {"by": "bob"}, idempotency_key="a-1") == [
            waiter.run_id
        ]
    types = await event_types(ow, waiter.run_id)
    assert types.count("signal_received") == 1
    assert "run_waiting" in types
    steps = await ow.store.step_attempts(waiter.run_id)
    wait = next(s for s in steps if s.step_name == "approved")
    assert (wait.kind, wait.status, wait.output) == ("signal_wait", "completed", {"by": "ada"})


async def test_signal_reaches_every_waiter_once_and_nobody_else(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="waiter")
    async def waiter(ctx: ow_es.Context) -> Any:
        first = await ctx.step.wait_for_signal("go")
        second = await ctx.step.wait_for_signal("go", timeout="300ms")
        return [first, second]

    await ow.connect()
    assert await ow.send_signal("go", 1) == []  # no waiter: delivered to nobody
    async with running_worker(ow, concurrency=5):
        runs = [await waiter.start() for _ in range(3)]
        canceled = await waiter.start()
        for handle in [*runs, canceled]:
            await eventually(lambda h=handle: _waiting(ow, h.run_id, "go"))
        await canceled.cancel()
        delivered = await ow.send_signal("go", "hello")
        assert sorted(delivered) == sorted(h.run_id for h in runs)
        # Each waiter got it once: the second wait times out instead of reusing it.
        for handle in runs:
            assert await handle.result(timeout=10) == ["hello", None]
        assert await ow.send_signal("go", "late") == []  # finished runs never receive


async def test_send_signal_step_is_replay_safe(ow: ow_es.OpenWorkflow) -> None:
    attempts = {"n": 0}

    @ow.workflow(name="receiver")
    async def receiver(ctx: ow_es.Context) -> Any:
        return await ctx.step.wait_for_signal("ping")

    @ow.workflow(name="sender")
    async def sender(ctx: ow_es.Context) -> Any:
        reached = await ctx.step.send_signal("ping", {"n": 1})

        def flaky() -> int:
            attempts["n"] += 1
            if attempts["n"] == 1:
                raise RuntimeError("retry me")
            return attempts["n"]

        await ctx.step.run("after", flaky, retry=ow_es.RetryPolicy(initial_interval="10ms"))
        return reached

    await ow.connect()
    async with running_worker(ow, concurrency=4):
        target = await receiver.start()
        await eventually(lambda: _waiting(ow, target.run_id, "ping"))
        source = await sender.start()
        # The sender replays after its retry; its send is not repeated.
        assert await source.result(timeout=10) == [target.run_id]
        assert await target.result(timeout=10) == {"n": 1}
    types = await event_types(ow, source.run_id)
    assert types.count("signal_sent") == 1 and types.count("run_claimed") == 2
    assert (await event_types(ow, target.run_id)).count("signal_received") == 1


async def test_wait_timeout_returns_none(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="impatient")
    async def impatient(ctx: ow_es.Context) -> Any:
        return {"value": await ctx.step.wait_for_signal("never", timeout="200ms")}

    await ow.connect()
    async with running_worker(ow):
        handle = await impatient.start()
        assert await handle.result(timeout=10) == {"value": None}
