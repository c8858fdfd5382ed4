"""Signals: wait_for_signal / send_signal, delivery at awkward moments, parallel and named
waits, idempotency keys, namespaces, concurrent senders and payload limits."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import pytest

import ow_es
from tests.support.databases import ClientFactory
from tests.support.runs import event_types, parked
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
            await eventually(partial(_waiting, ow, handle.run_id, "go"))
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


async def _open_wait(client: ow_es.OpenWorkflow, run_id: str, step: str) -> bool:
    steps = await client.store.step_attempts(run_id)
    return any(
        s.step_name == step and s.kind == "signal_wait" and s.status == "running" for s in steps
    )


async def test_signal_sent_while_the_run_is_still_busy_is_not_lost(ow: ow_es.OpenWorkflow) -> None:
    """The wait step has started (its row is open) but the run has not parked yet: a slow
    sibling step still holds the worker. The signal must reach it, not vanish."""
    release = asyncio.Event()

    @ow.workflow(name="busy-waiter")
    async def busy_waiter(ctx: ow_es.Context) -> Any:
        async def slow() -> str:
            await release.wait()
            return "slow-done"

        got, slow_result = await asyncio.gather(
            ctx.step.wait_for_signal("poke"),  # no timeout: a lost signal hangs the run
            ctx.step.run("slow", slow),
        )
        return {"got": got, "slow": slow_result}

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        handle = await busy_waiter.start()
        await eventually(lambda: _open_wait(ow, handle.run_id, "poke"))
        run = await handle.status()
        assert run.worker_id is not None, "the run must still be held by its worker here"
        delivered = await ow.send_signal("poke", {"n": 7})
        assert delivered == [handle.run_id]
        release.set()
        assert await handle.result(timeout=5) == {"got": {"n": 7}, "slow": "slow-done"}
    assert (await event_types(ow, handle.run_id)).count("signal_received") == 1


async def test_two_parallel_waits_on_one_signal_in_one_run(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="twin-waits")
    async def twin_waits(ctx: ow_es.Context) -> Any:
        return await asyncio.gather(
            ctx.step.wait_for_signal("go", timeout="30s"),
            ctx.step.wait_for_signal("go", timeout="30s"),
        )

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        handle = await twin_waits.start()
        await eventually(lambda: _open_wait(ow, handle.run_id, "go:1"))
        await eventually(lambda: parked(ow, handle.run_id, "signal", name="go"))
        delivered = await ow.send_signal("go", "payload")
        assert delivered == [handle.run_id]  # one run, reported once
        assert await handle.result(timeout=15) == ["payload", "payload"]
    steps = {s.step_name: s for s in await ow.store.step_attempts(handle.run_id)}
    assert set(steps) == {"go", "go:1"}
    assert all(s.kind == "signal_wait" and s.status == "completed" for s in steps.values())
    assert all(s.output == "payload" for s in steps.values())


async def test_custom_and_repeated_wait_names(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="named-waits")
    async def named_waits(ctx: ow_es.Context) -> Any:
        await ctx.step.run("go", lambda: "a function step that takes the signal's name")
        first = await ctx.step.wait_for_signal("go", name="approval")
        second = await ctx.step.wait_for_signal("go", name="approval")
        third = await ctx.step.wait_for_signal("go")  # default name "go" is taken: "go:1"
        return [first, second, third]

    await ow.connect()
    async with running_worker(ow):
        handle = await named_waits.start()
        for step, value in (("approval", 1), ("approval:1", 2), ("go:1", 3)):
            await eventually(partial(_open_wait, ow, handle.run_id, step))
            await eventually(lambda: parked(ow, handle.run_id, "signal", name="go"))
            assert await ow.send_signal("go", value) == [handle.run_id]
        assert await handle.result(timeout=15) == [1, 2, 3]
    steps = await ow.store.step_attempts(handle.run_id)
    waits = [(s.step_name, s.signal_name, s.output) for s in steps if s.kind == "signal_wait"]
    assert waits == [("approval", "go", 1), ("approval:1", "go", 2), ("go:1", "go", 3)]
    # waiting_for names the *signal*, whatever the step is called.
    events = await ow.history(handle.run_id)
    waiting = [e for e in events if e.type == "run_waiting"]
    assert len(waiting) == 3
    for event in waiting:
        state = await ow.state_at(handle.run_id, event.seq)
        assert state.run.waiting_for is not None
        assert state.run.waiting_for["kind"] == "signal"
        assert state.run.waiting_for["name"] == "go"


async def test_signal_data_over_the_payload_limit_is_rejected_and_not_delivered(
    make_client: ClientFactory,
) -> None:
    ow = await make_client(max_payload_bytes=2000)

    @ow.workflow(name="limited-waiter")
    async def limited_waiter(ctx: ow_es.Context) -> Any:
        return await ctx.step.wait_for_signal("big", timeout="30s")

    @ow.workflow(name="limited-sender")
    async def limited_sender(ctx: ow_es.Context) -> Any:
        try:
            await ctx.step.send_signal("big", "y" * 5000)
        except (ow_es.ValidationError, ow_es.StepFailed) as exc:
            return type(exc).__name__
        return "sent"

    await ow.connect()
    async with running_worker(ow, concurrency=2):
        waiter = await limited_waiter.start()
        await eventually(lambda: parked(ow, waiter.run_id, "signal", name="big"))
        with pytest.raises(ow_es.ValidationError):
            await ow.send_signal("big", "x" * 5000)
        # A step that sends too much fails inside the workflow; nothing is delivered.
        sender = await limited_sender.start()
        assert await sender.result(timeout=15) in ("ValidationError", "StepFailed")
        assert "signal_received" not in await event_types(ow, waiter.run_id)
        assert await parked(ow, waiter.run_id, "signal", name="big")
        # Data within the limit still gets through.
        assert await ow.send_signal("big", "small") == [waiter.run_id]
        assert await waiter.result(timeout=15) == "small"


async def test_signals_do_not_cross_namespaces(make_client: ClientFactory) -> None:
    blue = await make_client(namespace="blue")
    green = await make_client(namespace="green")
    handles = {}
    for client in (blue, green):

        @client.workflow(name="ns-waiter")
        async def ns_waiter(ctx: ow_es.Context) -> Any:
            return await ctx.step.wait_for_signal("shared", timeout="30s")

        await client.connect()
        handles[client.namespace] = ns_waiter
    async with running_worker(blue), running_worker(green):
        b = await handles["blue"].start()
        g = await handles["green"].start()
        await eventually(lambda: parked(blue, b.run_id, "signal", name="shared"))
        await eventually(lambda: parked(green, g.run_id, "signal", name="shared"))
        # The same idempotency key in two namespaces: two independent sends.
        assert await blue.send_signal("shared", "to-blue", idempotency_key="k") == [b.run_id]
        assert await green.send_signal("shared", "to-green", idempotency_key="k") == [g.run_id]
        assert await b.result(timeout=15) == "to-blue"
        assert await g.result(timeout=15) == "to-green"


async def test_idempotent_send_with_no_waiter_is_not_replayed_later(
    ow: ow_es.OpenWorkflow,
) -> None:
    @ow.workflow(name="late-waiter")
    async def late_waiter(ctx: ow_es.Context) -> Any:
        return await ctx.step.wait_for_signal("ping", timeout="400ms")

    await ow.connect()
    assert await ow.send_signal("ping", 1, idempotency_key="once") == []
    async with running_worker(ow):
        handle = await late_waiter.start()
        await eventually(lambda: parked(ow, handle.run_id, "signal", name="ping"))
        # The key was used: the repeat returns the first outcome and delivers nothing.
        assert await ow.send_signal("ping", 2, idempotency_key="once") == []
        assert await handle.result(timeout=15) is None
    assert "signal_received" not in await event_types(ow, handle.run_id)


async def test_concurrent_sends_reach_one_waiter_once(make_client: ClientFactory) -> None:
    """Several senders race for the same waiting runs: every wait receives exactly one
    signal, and every run id is reported delivered by exactly one send."""
    ow = await make_client()

    @ow.workflow(name="race-waiter")
    async def race_waiter(ctx: ow_es.Context) -> Any:
        return await ctx.step.wait_for_signal("race", timeout="30s")

    await ow.connect()
    senders = [await make_client() for _ in range(4)]
    for sender in senders:
        await sender.connect()
    async with running_worker(ow, concurrency=20):
        handles = [await race_waiter.start() for _ in range(20)]
        for handle in handles:
            await eventually(partial(parked, ow, handle.run_id, "signal", name="race"))
        results = await asyncio.gather(*(s.send_signal("race", i) for i, s in enumerate(senders)))
        reached = [run_id for ids in results for run_id in ids]
        assert sorted(reached) == sorted(h.run_id for h in handles), results
        outputs = [await h.result(timeout=15) for h in handles]
    for handle, output in zip(handles, outputs, strict=True):
        types = await event_types(ow, handle.run_id)
        assert types.count("signal_received") == 1, (handle.run_id, types)
        winner = next(i for i, ids in enumerate(results) if handle.run_id in ids)
        assert output == winner


async def test_concurrent_sends_with_one_idempotency_key(make_client: ClientFactory) -> None:
    """Like concurrent starts with one key: one send happens, every caller gets its ids."""
    ow = await make_client()

    @ow.workflow(name="key-waiter")
    async def key_waiter(ctx: ow_es.Context) -> Any:
        return await ctx.step.wait_for_signal("keyed", timeout="30s")

    await ow.connect()
    senders = [await make_client() for _ in range(4)]
    for sender in senders:
        await sender.connect()
    async with running_worker(ow, concurrency=10):
        handles = [await key_waiter.start() for _ in range(10)]
        for handle in handles:
            await eventually(partial(parked, ow, handle.run_id, "signal", name="keyed"))
        results = await asyncio.gather(
            *(s.send_signal("keyed", i, idempotency_key="same") for i, s in enumerate(senders)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == [], errors
        expected = sorted(h.run_id for h in handles)
        assert all(sorted(r) == expected for r in results), results  # type: ignore[arg-type]
        outputs = {await h.result(timeout=15) for h in handles}
    assert len(outputs) == 1  # one send's data reached everybody
    for handle in handles:
        assert (await event_types(ow, handle.run_id)).count("signal_received") == 1


async def test_one_idempotency_key_for_two_different_signals(ow: ow_es.OpenWorkflow) -> None:
    """Start keys are per workflow name; a send's key used with another signal name is
    another send (a demanding reading: API.md does not say what a key is scoped by)."""

    @ow.workflow(name="order-flow")
    async def order_flow(ctx: ow_es.Context) -> Any:
        approved = await ctx.step.wait_for_signal("approved", timeout="20s")
        shipped = await ctx.step.wait_for_signal("shipped", timeout="20s")
        return [approved, shipped]

    await ow.connect()
    async with running_worker(ow):
        handle = await order_flow.start()
        await eventually(lambda: parked(ow, handle.run_id, "signal", name="approved"))
        assert await ow.send_signal("approved", "a", idempotency_key="order-1") == [handle.run_id]
        await eventually(lambda: parked(ow, handle.run_id, "signal", name="shipped"))
        assert await ow.send_signal("shipped", "s", idempotency_key="order-1") == [handle.run_id]
        # Reported delivered to the run, so the run must have received it.
        types = await event_types(ow, handle.run_id)
        assert types.count("signal_received") == 2, types
        assert await handle.result(timeout=10) == ["a", "s"]


async def test_a_send_retried_after_a_lost_deadlock_records_its_signal_once(
    pg_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that loses a deadlock runs again from the start with the same requests;
    the step's send must then be recorded once, not once per try."""
    from psycopg import errors

    from ow_es.store.postgres.transaction import PostgresTransaction

    ow = ow_es.OpenWorkflow(pg_db["url"], schema=pg_db["schema"])

    @ow.workflow(name="waits-for-go")
    async def waits(ctx: ow_es.Context) -> Any:
        return await ctx.step.wait_for_signal("go")

    @ow.workflow(name="sends-go")
    async def sends(ctx: ow_es.Context) -> list[str]:
        return await ctx.step.send_signal("go", {"n": 1})

    real_send = PostgresTransaction.send_notifications
    lost: list[int] = []

    async def deadlock_once(self: PostgresTransaction, channels: Any) -> None:
        if not lost and self.done == [] and self.ready:  # the delivery wakes the waiter
            lost.append(1)
            raise errors.DeadlockDetected("simulated: deadlock detected")
        await real_send(self, channels)

    try:
        await ow.connect()
        async with running_worker(ow):
            waiting = await waits.start()
            await eventually(partial(_waiting, ow, waiting.run_id, "go"), timeout=10)
            monkeypatch.setattr(PostgresTransaction, "send_notifications", deadlock_once)
            sending = await sends.start()
            assert await sending.result(timeout=15) == [waiting.run_id]
            assert await waiting.result(timeout=15) == {"n": 1}
        assert lost == [1]
        types = await event_types(ow, sending.run_id)
        assert types.count("signal_sent") == 1, types
        assert (await event_types(ow, waiting.run_id)).count("signal_received") == 1
    finally:
        await ow.close()
