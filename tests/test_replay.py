"""Replay: the workflow sees the same step values whether a step ran now or was replayed,
and the event log is an honest audit of who wrote what."""

from __future__ import annotations

import asyncio
import threading

import msgspec

import ow_es
from tests.support.workers import running_worker


class Card(msgspec.Struct):
    number: str
    limit: int


async def test_step_values_are_identical_on_first_run_and_replay(
    ow: ow_es.OpenWorkflow,
) -> None:
    observed: list[dict[str, object]] = []
    calls: list[str] = []

    @ow.workflow(name="same-values")
    async def same_values(ctx: ow_es.Context) -> dict[str, object]:
        async def load_card() -> Card:
            calls.append("card")
            return Card("4242", 500)

        async def pair():  # unannotated on purpose
            calls.append("pair")
            return (1, "two")

        card = await ctx.step.run("card", load_card)
        got_pair = await ctx.step.run("pair", pair)
        observed.append(
            {
                "card_type": type(card).__name__,
                "card": msgspec.to_builtins(card),
                "pair": got_pair,
            }
        )
        await ctx.step.sleep("nap", "50ms")
        return {"limit": card.limit, "pair": got_pair}

    await ow.connect()
    async with running_worker(ow):
        handle = await same_values.start()
        assert await handle.result(timeout=15) == {"limit": 500, "pair": [1, "two"]}
    assert calls == ["card", "pair"]
    assert len(observed) == 2  # first run, then the replay after the sleep
    assert observed[0] == observed[1]
    assert observed[0]["card_type"] == "Card"
    assert observed[0]["pair"] == [1, "two"]  # JSON round trip on the first run too


async def test_sync_steps_run_in_threads_async_steps_on_the_loop(ow: ow_es.OpenWorkflow) -> None:
    where: dict[str, int] = {}

    @ow.workflow(name="threads")
    async def threads(ctx: ow_es.Context) -> str:
        where["loop"] = threading.get_ident()

        def sync_step() -> str:
            where["sync"] = threading.get_ident()
            return "sync"

        async def async_step() -> str:
            where["async"] = threading.get_ident()
            return "async"

        return await ctx.step.run("s", sync_step) + await ctx.step.run("a", async_step)

    await ow.connect()
    async with running_worker(ow):
        assert await (await threads.start()).result(timeout=15) == "syncasync"
    assert where["async"] == where["loop"]
    assert where["sync"] != where["loop"]


async def test_every_event_a_worker_writes_names_the_worker(ow: ow_es.OpenWorkflow) -> None:
    tries: list[int] = []
    fast = ow_es.RetryPolicy(initial_interval="1ms", maximum_interval="1ms", maximum_attempts=3)

    @ow.workflow(name="audited")
    async def audited(ctx: ow_es.Context) -> str:
        async def slow() -> str:
            await asyncio.sleep(0.1)  # long enough to get a step_started event
            return "slow"

        async def flaky() -> str:
            tries.append(1)
            if len(tries) == 1:
                raise RuntimeError("once")
            return "flaky"

        a = await ctx.step.run("slow", slow)
        b = await ctx.step.run("flaky", flaky, retry=fast)
        await ctx.step.sleep("nap", "30ms")
        return a + b

    await ow.connect()
    async with running_worker(ow) as worker:
        handle = await audited.start()
        assert await handle.result(timeout=15) == "slowflaky"
    events = await ow.history(handle.run_id)
    types = {e.type for e in events}
    assert {"step_started", "step_failed", "retry_scheduled", "run_sleeping"} <= types
    for event in events[1:]:
        assert event.data.get("worker_id") == worker.worker_id, event
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_heartbeats_keep_a_long_step_with_its_owner(ow: ow_es.OpenWorkflow) -> None:
    """A step longer than several leases is not taken over while its worker heartbeats,
    even with a second worker polling for work."""
    calls: list[int] = []

    @ow.workflow(name="long-step")
    async def long_step(ctx: ow_es.Context) -> str:
        async def slow() -> str:
            calls.append(1)
            await asyncio.sleep(2.0)
            return "done"

        return await ctx.step.run("slow", slow)

    await ow.connect()
    async with (
        running_worker(ow, lease="1s", poll_interval="50ms"),
        running_worker(ow, lease="1s", poll_interval="50ms"),
    ):
        handle = await long_step.start()
        assert await handle.result(timeout=15) == "done"
    assert calls == [1]
    types = [e.type for e in await ow.history(handle.run_id)]
    assert types.count("run_claimed") == 1
