"""Starting a run and getting its result: the end-to-end path, handles and status, result
errors and timeouts, unknown run ids."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import msgspec
import pytest

import ow_es
from tests.support.runs import event_types
from tests.support.workers import running_worker


class Order(msgspec.Struct):
    order_id: str
    amount_cents: int


async def test_run_completes_with_typed_input_and_steps(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="charge", version="2")
    async def charge(ctx: ow_es.Context, order: Order) -> dict[str, object]:
        card = await ctx.step.run("load-card", lambda: f"card-{order.order_id}")

        async def pay() -> int:
            return order.amount_cents * 2

        paid = await ctx.step.run("charge", pay)
        return {"card": card, "paid": paid}

    await ow.connect()
    async with running_worker(ow):
        handle = await charge.start(Order("o-1", 500))
        assert await handle.result(timeout=15) == {"card": "card-o-1", "paid": 1000}
    run = await handle.status()
    assert run.status == "completed"
    assert run.attempts == 1
    types = await event_types(ow, handle.run_id)
    assert types[0] == "run_created" and types[1] == "run_claimed"
    assert types[-1] == "run_completed"


async def test_result_returns_output_and_raises_workflow_failed(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="ok")
    async def ok(ctx: ow_es.Context, n: int) -> dict[str, int]:
        return {"double": n * 2}

    @ow.workflow(name="boom")
    async def boom(ctx: ow_es.Context) -> None:
        raise ValueError("kaboom 42")

    await ow.connect()
    async with running_worker(ow):
        good = await ok.start(21)
        bad = await boom.start()
        assert await good.result(timeout=15) == {"double": 42}
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await bad.result(timeout=15)
    assert info.value.run_id == bad.run_id
    assert info.value.error_type == "ValueError"
    assert info.value.error_message == "kaboom 42"
    assert "kaboom 42" in str(info.value.error["traceback"])
    assert isinstance(info.value, ow_es.OwEsError)


async def test_result_raises_workflow_canceled(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start("nobody-serves-this", None)
    waiter = asyncio.ensure_future(handle.result(timeout=15))
    await asyncio.sleep(0.1)
    await handle.cancel()
    with pytest.raises(ow_es.WorkflowCanceled) as info:
        await waiter
    assert info.value.run_id == handle.run_id
    # Also for a caller that asks after the fact.
    with pytest.raises(ow_es.WorkflowCanceled):
        await handle.result(timeout=1)


async def test_result_timeout_is_a_timeout_error(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start("nobody-serves-this", None)
    started = time.monotonic()
    with pytest.raises(ow_es.ResultTimeout):
        await handle.result(timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3
    with pytest.raises(TimeoutError):
        await handle.result(timeout=0.05)
    assert issubclass(ow_es.ResultTimeout, TimeoutError)
    assert (await handle.status()).status == "pending"


async def test_result_is_woken_promptly_when_the_run_ends(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="prompt")
    async def prompt(ctx: ow_es.Context) -> str:
        return "done"

    await ow.connect()
    handle = await prompt.start()
    waiter = asyncio.ensure_future(handle.result(timeout=20))
    await asyncio.sleep(0.2)  # the waiter is parked now
    async with running_worker(ow):
        started = time.monotonic()
        assert await waiter == "done"
        assert time.monotonic() - started < 3


async def test_unknown_run_ids_raise_run_not_found(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    missing = "0" * 32
    with pytest.raises(ow_es.RunNotFound):
        await ow.get_handle(missing)
    with pytest.raises(ow_es.RunNotFound):
        await ow.cancel(missing)
    with pytest.raises(ow_es.RunNotFound):
        await ow.history(missing)
    with pytest.raises(ow_es.RunNotFound):
        await ow.resume(missing)
    handle = ow_es.RunHandle(ow, missing, "whatever")
    with pytest.raises(ow_es.RunNotFound):
        await handle.status()
    with pytest.raises(ow_es.RunNotFound):
        await handle.cancel()
    with pytest.raises(LookupError):
        await ow.get_handle(missing)


async def test_get_handle_and_status(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="describe", version="7")
    async def describe(ctx: ow_es.Context, data: dict[str, int]) -> int:
        return data["a"] + 1

    await ow.connect()
    started = await describe.start({"a": 1}, idempotency_key="key-1")
    handle = await ow.get_handle(started.run_id)
    assert handle.run_id == started.run_id
    assert handle.workflow_name == "describe"
    run = await handle.status()
    assert isinstance(run, ow_es.WorkflowRun)
    assert run.id == started.run_id
    assert run.namespace_id == "default"
    assert run.workflow_name == "describe" and run.version == "7"
    assert run.status == "pending"
    assert run.input == {"a": 1}
    assert run.output is None and run.error is None
    assert run.idempotency_key == "key-1"
    assert run.attempts == 0
    assert run.worker_id is None and run.lease_until is None
    assert run.parent_run_id is None
    assert run.waiting_for is None
    assert run.seq == 1
    assert isinstance(run.created_at, datetime) and run.created_at.utcoffset() is not None
    assert run.updated_at == run.created_at
    assert run.started_at is None and run.finished_at is None

    async with running_worker(ow):
        assert await handle.result(timeout=15) == 2
    done = await handle.status()
    assert done.status == "completed"
    assert done.output == 2
    assert done.attempts == 1
    assert done.started_at is not None and done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    assert done.updated_at == done.finished_at
    events = await ow.history(handle.run_id)
    assert done.seq == events[-1].seq
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
