"""Idempotent starts: one run per (namespace, workflow name, key), whatever happens."""

from __future__ import annotations

import asyncio

import pytest

import ow_es
from tests.support.databases import ClientFactory
from tests.support.runs import event_types
from tests.support.workers import running_worker


async def test_same_key_returns_the_existing_run_whatever_the_input(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    first = await ow.start("idem", {"n": 1}, idempotency_key="order-1")
    second = await ow.start("idem", {"n": 2}, idempotency_key="order-1")
    third = await ow.start("idem", None, idempotency_key="order-1", available_at="1h")
    assert first.run_id == second.run_id == third.run_id
    run = await second.status()
    assert run.input == {"n": 1}
    assert run.idempotency_key == "order-1"
    assert len((await ow.list_runs()).runs) == 1
    assert await event_types(ow, first.run_id) == ["run_created"]
    # Another key makes another run.
    other = await ow.start("idem", {"n": 3}, idempotency_key="order-2")
    assert other.run_id != first.run_id


async def test_same_key_returns_the_run_whatever_its_status(ow: ow_es.OpenWorkflow) -> None:
    calls: list[str] = []

    @ow.workflow(name="idem-status")
    async def idem_status(ctx: ow_es.Context, mode: str) -> str:
        calls.append(mode)
        if mode == "fail":
            raise RuntimeError("no")
        return mode

    await ow.connect()
    async with running_worker(ow):
        done = await idem_status.start("ok", idempotency_key="done")
        assert await done.result(timeout=15) == "ok"
        failed = await idem_status.start("fail", idempotency_key="failed")
        with pytest.raises(ow_es.WorkflowFailed):
            await failed.result(timeout=15)
        canceled = await idem_status.start("never", idempotency_key="canceled", available_at="1h")
        await canceled.cancel()

        again_done = await idem_status.start("other", idempotency_key="done")
        again_failed = await idem_status.start("ok", idempotency_key="failed")
        again_canceled = await idem_status.start("ok", idempotency_key="canceled")
        assert again_done.run_id == done.run_id
        assert again_failed.run_id == failed.run_id
        assert again_canceled.run_id == canceled.run_id
        assert await again_done.result(timeout=5) == "ok"
        with pytest.raises(ow_es.WorkflowFailed):
            await again_failed.result(timeout=5)
        with pytest.raises(ow_es.WorkflowCanceled):
            await again_canceled.result(timeout=5)
        # Same key through the definition and through the name.
        by_name = await ow.start("idem-status", "x", idempotency_key="done")
        assert by_name.run_id == done.run_id
        await asyncio.sleep(0.2)  # give the worker a chance to (wrongly) run anything again
    assert sorted(calls) == ["fail", "ok"]
    assert len((await ow.list_runs()).runs) == 3


async def test_key_is_scoped_by_workflow_name_and_namespace(
    make_client: ClientFactory,
) -> None:
    here = await (await make_client()).connect()
    there = await (await make_client(namespace="elsewhere")).connect()
    a = await here.start("wf-a", None, idempotency_key="k")
    b = await here.start("wf-b", None, idempotency_key="k")
    c = await there.start("wf-a", None, idempotency_key="k")
    assert len({a.run_id, b.run_id, c.run_id}) == 3
    assert (await here.start("wf-a", None, idempotency_key="k")).run_id == a.run_id
    assert (await there.start("wf-a", None, idempotency_key="k")).run_id == c.run_id
    assert {r.id for r in (await here.list_runs()).runs} == {a.run_id, b.run_id}
    assert {r.id for r in (await there.list_runs()).runs} == {c.run_id}


async def test_concurrent_starts_with_one_key_create_one_run(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handles = await asyncio.gather(
        *(ow.start("race", {"caller": i}, idempotency_key="same") for i in range(10))
    )
    assert len({h.run_id for h in handles}) == 1
    runs = (await ow.list_runs()).runs
    assert len(runs) == 1
    assert await event_types(ow, runs[0].id) == ["run_created"]


async def test_concurrent_starts_from_two_clients_create_one_run(
    make_client: ClientFactory,
) -> None:
    one = await (await make_client()).connect()
    two = await (await make_client()).connect()

    async def starts(client: ow_es.OpenWorkflow, tag: str) -> list[ow_es.RunHandle]:
        return list(
            await asyncio.gather(
                *(
                    client.start("race", {"from": tag, "i": i}, idempotency_key="shared")
                    for i in range(10)
                )
            )
        )

    left, right = await asyncio.gather(starts(one, "one"), starts(two, "two"))
    ids = {h.run_id for h in left + right}
    assert len(ids) == 1
    for client in (one, two):
        runs = (await client.list_runs()).runs
        assert [r.id for r in runs] == list(ids)
    assert await event_types(one, ids.pop()) == ["run_created"]


async def test_idempotent_start_is_validated_like_any_start(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="typed-idem")
    async def typed_idem(ctx: ow_es.Context, n: int) -> int:
        return n

    await ow.connect()
    with pytest.raises(ow_es.ValidationError):
        await typed_idem.start(1, idempotency_key="")
    first = await typed_idem.start(1, idempotency_key="k")
    with pytest.raises(ow_es.ValidationError):
        await typed_idem.start("not a number", idempotency_key="k")
    assert (await typed_idem.start(2, idempotency_key="k")).run_id == first.run_id
