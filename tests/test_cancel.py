"""The client surface: results, cancel, handles, status, list_runs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime

import pytest

import ow_es
from tests.support.runs import event_types
from tests.support.waiting import eventually
from tests.support.workers import running_worker


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
    assert "kaboom 42" in info.value.error["traceback"]
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


async def test_cancel_is_idempotent_on_canceled_runs(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start("nobody-serves-this", None)
    await handle.cancel()
    await handle.cancel()
    await ow.cancel(handle.run_id)
    run = await handle.status()
    assert run.status == "canceled"
    assert run.finished_at is not None
    types = await event_types(ow, handle.run_id)
    assert types == ["run_created", "run_canceled"]


async def test_cancel_of_finished_runs_is_an_invalid_transition(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="finishes")
    async def finishes(ctx: ow_es.Context, fail: bool) -> str:
        if fail:
            raise RuntimeError("failing on purpose")
        return "fine"

    await ow.connect()
    async with running_worker(ow):
        completed = await finishes.start(False)
        failed = await finishes.start(True)
        assert await completed.result(timeout=15) == "fine"
        with pytest.raises(ow_es.WorkflowFailed):
            await failed.result(timeout=15)
    for handle, status in ((completed, "completed"), (failed, "failed")):
        before = await ow.history(handle.run_id)
        with pytest.raises(ow_es.InvalidTransition):
            await handle.cancel()
        assert (await handle.status()).status == status
        assert await ow.history(handle.run_id) == before


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


async def test_cancel_of_a_running_run_makes_the_worker_drop_it(ow: ow_es.OpenWorkflow) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    after: list[int] = []

    @ow.workflow(name="cancel-me")
    async def cancel_me(ctx: ow_es.Context) -> str:
        async def block() -> str:
            entered.set()
            await release.wait()
            return "late"

        await ctx.step.run("block", block)

        async def later() -> int:
            after.append(1)
            return 1

        await ctx.step.run("later", later)
        return "finished"

    @ow.workflow(name="next-one")
    async def next_one(ctx: ow_es.Context) -> str:
        return "next"

    await ow.connect()
    async with running_worker(ow, concurrency=1, lease="2s") as worker:
        handle = await cancel_me.start()
        await asyncio.wait_for(entered.wait(), 15)
        running = await handle.status()
        assert running.status == "running" and running.worker_id == worker.worker_id
        await handle.cancel()
        release.set()  # the step returns: the worker tries to record it

        async def dropped() -> bool:
            return worker.busy_slots == 0

        await eventually(dropped, timeout=10)
        # The freed slot serves the next run.
        assert await (await next_one.start()).result(timeout=15) == "next"

    with pytest.raises(ow_es.WorkflowCanceled):
        await handle.result(timeout=1)
    events = await ow.history(handle.run_id)
    types = [e.type for e in events]
    assert "run_canceled" in types
    assert types[-1] == "run_canceled", f"the worker wrote after the cancel: {types}"
    assert after == []
    run = await handle.status()
    assert run.status == "canceled"
    assert run.worker_id is None and run.lease_until is None


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


async def test_list_runs_filters(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    alpha = [await ow.start("alpha", {"i": i}) for i in range(4)]
    beta = [await ow.start("beta", {"i": i}) for i in range(2)]
    await alpha[0].cancel()
    await beta[1].cancel()

    def ids(page: ow_es.RunPage) -> set[str]:
        return {run.id for run in page.runs}

    everything = await ow.list_runs()
    assert len(everything.runs) == 6 and everything.next_cursor is None
    assert ids(await ow.list_runs(workflow_name="beta")) == {h.run_id for h in beta}
    assert ids(await ow.list_runs(status="canceled")) == {alpha[0].run_id, beta[1].run_id}
    pending_alpha = await ow.list_runs(status="pending", workflow_name="alpha")
    assert ids(pending_alpha) == {h.run_id for h in alpha[1:]}
    assert all(r.status == "pending" and r.workflow_name == "alpha" for r in pending_alpha.runs)
    assert (await ow.list_runs(status="completed")).runs == []
    assert (await ow.list_runs(workflow_name="gamma")).runs == []


async def test_list_runs_pages_newest_first(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    created = [(await ow.start("paged", {"i": i})).run_id for i in range(5)]
    await ow.start("unrelated", None)
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(10):
        page = await ow.list_runs(workflow_name="paged", limit=2, cursor=cursor)
        sizes.append(len(page.runs))
        seen += [run.id for run in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [2, 2, 1]
    assert seen == list(reversed(created))

    # Unfiltered pages cover every run exactly once, newest first.
    everything: list[ow_es.WorkflowRun] = []
    cursor = None
    while True:
        page = await ow.list_runs(limit=4, cursor=cursor)
        everything += page.runs
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(everything) == 6 and len({r.id for r in everything}) == 6
    keys = [(r.created_at, r.id) for r in everything]
    assert keys == sorted(keys, reverse=True)

    # An exact fit: the last full page reports no further cursor... or an empty next page.
    page = await ow.list_runs(workflow_name="paged", limit=5)
    assert [r.id for r in page.runs] == list(reversed(created))
    assert page.next_cursor is None


async def test_list_runs_rejects_a_bad_limit_and_cursor(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    with pytest.raises(ow_es.ValidationError):
        await ow.list_runs(limit=0)
    with pytest.raises(ow_es.ValidationError):
        await ow.list_runs(cursor="definitely not a cursor")


async def _cancel_a_stuck_step(ow: ow_es.OpenWorkflow, *, after_step_started: bool) -> None:
    entered = asyncio.Event()
    outcome: list[str] = []

    @ow.workflow(name="stuck")
    async def stuck(ctx: ow_es.Context) -> str:
        async def forever() -> str:
            entered.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
            outcome.append("finished")
            return "never"

        return await ctx.step.run("forever", forever)

    await ow.connect()
    async with running_worker(ow, concurrency=1, lease="900ms") as worker:
        handle = await stuck.start()
        await asyncio.wait_for(entered.wait(), 15)
        if after_step_started:

            async def recorded() -> bool:
                return "step_started" in await event_types(ow, handle.run_id)

            await eventually(recorded, timeout=5)
        await handle.cancel()

        async def dropped() -> bool:
            return worker.busy_slots == 0

        await eventually(dropped, timeout=5)

        async def step_cancelled() -> bool:
            return bool(outcome)

        with contextlib.suppress(AssertionError):  # checked just below
            await eventually(step_cancelled, timeout=1.5)
    assert outcome == ["cancelled"], "the dropped run's step is still running"
    types = await event_types(ow, handle.run_id)
    assert types[-1] == "run_canceled"


async def test_cancel_drops_a_run_whose_step_never_returns(ow: ow_es.OpenWorkflow) -> None:
    """Nothing to write, so the worker learns of the cancel from its heartbeat and stops
    the step."""
    await _cancel_a_stuck_step(ow, after_step_started=True)


async def test_cancel_early_in_a_step_stops_the_step_too(ow: ow_es.OpenWorkflow) -> None:
    """Canceled within the step's first 50 ms: the worker learns it when recording
    step_started is refused; the step must be stopped as well, not left running."""
    await _cancel_a_stuck_step(ow, after_step_started=False)


async def test_cancel_of_a_sleeping_run_keeps_it_asleep_forever(ow: ow_es.OpenWorkflow) -> None:
    woke: list[int] = []

    @ow.workflow(name="canceled-sleeper")
    async def canceled_sleeper(ctx: ow_es.Context) -> None:
        await ctx.step.sleep("nap", "300ms")
        woke.append(1)

    await ow.connect()
    async with running_worker(ow):
        handle = await canceled_sleeper.start()

        async def parked() -> bool:
            return (await handle.status()).waiting_for is not None

        await eventually(parked, timeout=10)
        await handle.cancel()
        run = await handle.status()
        assert run.status == "canceled"
        assert run.waiting_for is None and run.available_at is None
        await asyncio.sleep(0.6)  # past the wake time
    assert woke == []
    types = await event_types(ow, handle.run_id)
    assert types[-1] == "run_canceled"
    assert types.count("run_claimed") == 1


async def test_list_runs_pages_through_runs_created_at_the_same_instant(
    ow: ow_es.OpenWorkflow,
) -> None:
    from ow_es import events as ev
    from ow_es.durations import utcnow
    from ow_es.store import Appended, AppendRequest

    await ow.connect()
    now = utcnow()
    requests = [
        AppendRequest(
            run_id=f"tie-{i:02d}",
            events=[ev.RunCreated(workflow_name="tied", input=i, available_at=now)],
        )
        for i in range(7)
    ]
    outcomes = await ow.store.append(requests)
    assert all(isinstance(o, Appended) for o in outcomes)
    assert len({(await ow.get_handle(r.run_id)).run_id for r in requests}) == 7
    created = {(await (await ow.get_handle(r.run_id)).status()).created_at for r in requests}
    assert len(created) == 1  # one transaction, one time

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page = await ow.list_runs(limit=3, cursor=cursor)
        seen += [run.id for run in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted((r.run_id for r in requests), reverse=True)


async def test_list_runs_rejects_an_unknown_status(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    with pytest.raises(ow_es.ValidationError, match="unknown status 'finished'"):
        await ow.list_runs(status="finished")
