"""Held runs (``hold_parked_runs``): a worker keeps the workflow function of a run it parked on
a sleep or a wait for a signal suspended there, and its next claim of the run goes on from the
wait (with the signal, read since the park) instead of replaying the function; another worker's
claim in between, an eviction or the worker stopping lets the function go, and the run is
replayed as usual."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

import ow_es
from tests.support.runs import event_types, parked
from tests.support.waiting import eventually
from tests.support.workers import running_worker, serving


class Body:
    """How often a workflow function was entered, and how often it ended (returned or
    unwound): every entry ends, so none is left suspended."""

    def __init__(self) -> None:
        self.entered = 0
        self.ended = 0


def _napper(ow: ow_es.OpenWorkflow, body: Body, naps: int = 3, nap: str = "200ms") -> Any:
    @ow.workflow(name="held-napper")
    async def napper(ctx: ow_es.Context) -> list[int]:
        body.entered += 1
        try:
            done: list[int] = []
            for i in range(naps):

                def step(i: int = i) -> int:
                    return i

                done.append(await ctx.step.run(f"step-{i}", step))
                await ctx.step.sleep(f"nap-{i}", nap)  # parks (unless the machine is very slow)
            done.append(await ctx.step.run("last", lambda: naps))
            return done
        finally:
            body.ended += 1

    return napper


def _reads(ow: ow_es.OpenWorkflow) -> list[tuple[str, int]]:
    """Every history read through the client's store: (run id, read after seq)."""
    reads: list[tuple[str, int]] = []
    real_read = ow.store.read_run_events

    async def read_run_events(run_id: str, after: int = 0) -> Any:
        reads.append((run_id, after))
        return await real_read(run_id, after)

    ow.store.read_run_events = read_run_events  # type: ignore[method-assign]
    return reads


async def test_a_held_run_goes_on_from_its_sleep_without_replay_or_history_read(
    ow: ow_es.OpenWorkflow,
) -> None:
    body = Body()
    napper = _napper(ow, body)
    await ow.connect()
    reads = _reads(ow)
    async with running_worker(ow, poll_interval="50ms", hold_parked_runs=10) as worker:
        handle = await napper.start()
        assert await handle.result(timeout=20) == [0, 1, 2, 3]
    assert [r for r in reads if r[0] == handle.run_id] == []  # each claim went on, no read
    claims = (await event_types(ow, handle.run_id)).count("run_claimed")
    assert claims >= 3  # the start, then one claim per sleep that parked (3 but on a slow day)
    assert worker.held is not None and worker.held.resumed == claims - 1
    assert (body.entered, body.ended) == (1, 1)  # one call of the function, never replayed
    assert len(worker.held) == 0


async def test_a_held_run_writes_the_history_a_replayed_one_does(ow: ow_es.OpenWorkflow) -> None:
    body = Body()
    napper = _napper(ow, body, naps=2)
    await ow.connect()
    histories = []
    for hold in (0, 10):
        async with running_worker(ow, poll_interval="50ms", hold_parked_runs=hold):
            handle = await napper.start()
            assert await handle.result(timeout=20) == [0, 1, 2]
        events = await ow.history(handle.run_id)
        histories.append([(e.type, e.data.get("step_name"), e.data.get("kind")) for e in events])
    assert histories[0] == histories[1]
    assert body.entered == 3 + 1  # replayed: once per claim; held: once


async def test_a_held_wait_for_a_signal_goes_on_with_only_the_events_since_its_park(
    ow: ow_es.OpenWorkflow,
) -> None:
    body = Body()

    @ow.workflow(name="held-listener")
    async def listener(ctx: ow_es.Context) -> list[Any]:
        body.entered += 1
        try:
            got = []
            for i in range(3):
                got.append(await ctx.step.wait_for_signal(f"go-{i}"))
            got.append(await ctx.step.wait_for_signal("late", timeout="200ms"))  # times out
            return got
        finally:
            body.ended += 1

    await ow.connect()
    reads = _reads(ow)
    async with running_worker(ow, poll_interval="50ms", hold_parked_runs=10) as worker:
        handle = await listener.start()
        for i in range(3):
            step = f"go-{i}"
            await eventually(functools.partial(parked, ow, handle.run_id, "signal", step=step))
            assert await ow.send_signal(step, {"n": i}) == [handle.run_id]
        assert await handle.result(timeout=20) == [{"n": 0}, {"n": 1}, {"n": 2}, None]
    mine = [after for run_id, after in reads if run_id == handle.run_id]
    assert (body.entered, body.ended) == (1, 1)  # one call of the function, never replayed
    assert worker.held is not None and worker.held.resumed == 4  # three signals, one timeout
    # Each signal's claim read only what came after its park (the signal, the claim); the
    # timeout's claim read nothing (the claimed row is all that happened).
    assert len(mine) == 3 and all(after > 2 for after in mine)


async def test_a_sleep_beside_another_step_in_flight_unwinds_as_usual(
    ow: ow_es.OpenWorkflow,
) -> None:
    entered: list[int] = []

    @ow.workflow(name="nap-beside-a-step")
    async def beside(ctx: ow_es.Context) -> int:
        entered.append(1)

        async def slow() -> int:
            await asyncio.sleep(0.05)
            return 7

        _, value = await asyncio.gather(ctx.step.sleep("nap", "300ms"), ctx.step.run("x", slow))
        return int(value)

    await ow.connect()
    async with running_worker(ow, poll_interval="50ms", hold_parked_runs=10) as worker:
        handle = await beside.start()
        assert await handle.result(timeout=20) == 7
    assert worker.held is not None and worker.held.resumed == 0
    assert len(entered) == 2  # the park unwound it; the wake-up replayed it


async def test_a_held_function_is_let_go_when_another_worker_claimed_the_run_meanwhile(
    ow: ow_es.OpenWorkflow,
) -> None:
    body = Body()
    napper = _napper(ow, body, naps=2, nap="800ms")
    release = asyncio.Event()

    @ow.workflow(name="slot-hog")
    async def hog(ctx: ow_es.Context) -> None:
        async def hold_the_slot() -> None:
            await release.wait()

        await ctx.step.run("hog", hold_the_slot)

    await ow.connect()
    a = ow.worker(worker_id="a", concurrency=1, poll_interval="50ms", hold_parked_runs=10)
    async with serving(a):
        handle = await napper.start()
        await eventually(lambda: parked(ow, handle.run_id, "sleep", step="nap-0"))
        held = a.held
        assert held is not None
        await eventually(lambda: len(held) == 1)  # kept just after its park's commit
        hogging = await hog.start()  # a's one slot is taken when the nap ends: b claims
        await eventually(lambda: _running(ow, hogging.run_id))
        async with running_worker(ow, worker_id="b", poll_interval="50ms"):
            await eventually(lambda: parked(ow, handle.run_id, "sleep", step="nap-1"))
        release.set()
        assert await handle.result(timeout=20) == [0, 1, 2]
        await hogging.result(timeout=20)
    events = await ow.history(handle.run_id)
    assert [e.data["worker_id"] for e in events if e.type == "run_claimed"] == ["a", "b", "a"]
    assert held.resumed == 0  # b's claim came between: a's held function was let go
    assert (body.entered, body.ended) == (3, 3)  # a, b's replay, a's replay: all ended
    assert [e.type for e in events].count("run_completed") == 1


async def _running(ow: ow_es.OpenWorkflow, run_id: str) -> bool:
    run = await ow.store.get_run(run_id)
    return run is not None and run.status == "running" and run.worker_id is not None


async def test_held_runs_past_the_bound_are_let_go_oldest_first(ow: ow_es.OpenWorkflow) -> None:
    body = Body()
    napper = _napper(ow, body, naps=2, nap="300ms")
    await ow.connect()
    async with running_worker(ow, poll_interval="50ms", hold_parked_runs=1) as worker:
        handles = [await napper.start() for _ in range(3)]
        for handle in handles:
            assert await handle.result(timeout=30) == [0, 1, 2]
    assert worker.held is not None and len(worker.held) == 0
    wakes = 0
    for handle in handles:
        wakes += (await event_types(ow, handle.run_id)).count("run_claimed") - 1
    # Each wake-up went on from a held function or replayed one that was let go.
    assert body.entered == len(handles) + wakes - worker.held.resumed
    assert body.ended == body.entered
    assert worker.held.resumed < wakes  # three runs parked at once: two were let go


async def test_a_stopping_worker_lets_its_held_functions_go_and_another_replays_them(
    ow: ow_es.OpenWorkflow,
) -> None:
    body = Body()
    napper = _napper(ow, body, naps=1, nap="1s")
    await ow.connect()
    async with running_worker(ow, poll_interval="50ms", hold_parked_runs=10) as worker:
        handle = await napper.start()
        await eventually(lambda: parked(ow, handle.run_id, "sleep", step="nap-0"))
        held = worker.held
        assert held is not None
        await eventually(lambda: len(held) == 1)  # kept just after its park's commit
    assert len(held) == 0 and (body.entered, body.ended) == (1, 1)  # unwound at stop
    async with running_worker(ow, poll_interval="50ms"):
        assert await handle.result(timeout=20) == [0, 1]
    assert (body.entered, body.ended) == (2, 2)


def test_holding_takes_a_count_of_runs() -> None:
    ow = ow_es.OpenWorkflow("sqlite:///:memory:")
    with pytest.raises(ValueError, match="hold_parked_runs"):
        ow.worker(hold_parked_runs=-1)
    assert ow.worker().held is None  # off unless asked for
