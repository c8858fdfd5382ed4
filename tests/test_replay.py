"""Replay: the workflow sees the same step values whether a step ran now or was replayed,
the event log is an honest audit of who wrote what, and a worker that parked a run replays it
from the state it kept, reading only the events written since."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ow_es
from ow_es import events as ev
from ow_es.models import Event, WorkflowRun
from ow_es.runtime import executor, replay_cache
from ow_es.runtime.history import History
from ow_es.runtime.replay_cache import ReplayCache, Replayed
from ow_es.store import Store
from tests.support.runs import event_types, parked
from tests.support.waiting import eventually
from tests.support.workers import running_worker, serving


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


# -- the replay cache: a worker's reclaim of a run it parked reads only the newer events -------


Reads = list[tuple[str, int, list[int]]]


def _record_reads(client: ow_es.OpenWorkflow) -> Reads:
    """Every history read through the client's real store: (run id, after, seqs read)."""
    reads: Reads = []
    real_read = client.store.read_run_events

    async def read_run_events(run_id: str, after: int = 0) -> list[Event]:
        events = await real_read(run_id, after)
        reads.append((run_id, after, [e.seq for e in events]))
        return events

    client.store.read_run_events = read_run_events  # type: ignore[method-assign]
    return reads


def _napper(client: ow_es.OpenWorkflow) -> ow_es.Workflow[Any]:
    @client.workflow(name="napper")
    async def napper(ctx: ow_es.Context) -> int:
        total = 0
        for i in range(4):

            async def add(i: int = i) -> int:
                return i

            total += await ctx.step.run("add", add)
            await ctx.step.sleep("nap", "200ms")  # parks (unless the machine is very slow)
        return total

    return napper


async def test_a_run_that_sleeps_again_and_again_on_one_worker_reads_each_event_once(
    ow: ow_es.OpenWorkflow,
) -> None:
    napper = _napper(ow)
    await ow.connect()
    reads = _record_reads(ow)
    async with running_worker(ow, poll_interval="50ms") as worker:
        handle = await napper.start()
        assert await handle.result(timeout=20) == 6
    mine = [(after, seqs) for run_id, after, seqs in reads if run_id == handle.run_id]
    claims = (await event_types(ow, handle.run_id)).count("run_claimed")
    assert claims >= 3  # the start, then one claim per sleep that parked (4 but on a slow day)
    # The first claim has nothing to read; each wake-up reads only what came after the state
    # its worker kept when it parked the run, so no event is read twice.
    assert len(mine) == claims - 1 and all(after > 0 for after, _ in mine)
    read = [seq for _, seqs in mine for seq in seqs]
    assert read == list(range(3, read[-1] + 1))
    cache = worker.replay_cache
    assert cache is not None and (cache.hits, cache.misses) == (claims - 1, 0)
    assert len(cache) == 0 and cache.bytes == 0  # the last claim took it; the run is over


async def test_without_the_replay_cache_each_wake_up_reads_the_whole_history(
    ow: ow_es.OpenWorkflow,
) -> None:
    napper = _napper(ow)
    await ow.connect()
    reads = _record_reads(ow)
    async with running_worker(ow, poll_interval="50ms", replay_cache_bytes=0) as worker:
        handle = await napper.start()
        assert await handle.result(timeout=20) == 6
    assert worker.replay_cache is None
    mine = [(after, seqs) for run_id, after, seqs in reads if run_id == handle.run_id]
    claims = (await event_types(ow, handle.run_id)).count("run_claimed")
    assert claims >= 3 and len(mine) == claims - 1
    for after, seqs in mine:
        assert after == 0 and seqs == list(range(1, len(seqs) + 1))


async def test_a_run_another_worker_parked_or_held_in_between_is_read_whole(
    ow: ow_es.OpenWorkflow,
) -> None:
    @ow.workflow(name="relay")
    async def relay(ctx: ow_es.Context) -> list[str]:
        async def leg(name: str) -> str:
            return name

        first = await ctx.step.run("first", lambda: leg("a"))
        one = await ctx.step.wait_for_signal("one")
        second = await ctx.step.run("second", lambda: leg("b"))
        two = await ctx.step.wait_for_signal("two")
        return [first, one, second, two]

    await ow.connect()
    reads = _record_reads(ow)
    handle = await relay.start()
    a = ow.worker(worker_id="a", poll_interval="50ms")
    async with serving(a):
        await eventually(lambda: parked(ow, handle.run_id, "signal", step="one"))
    assert a.replay_cache is not None and handle.run_id in a.replay_cache
    async with running_worker(ow, worker_id="b", poll_interval="50ms") as b:
        await ow.send_signal("one", "x")
        await eventually(lambda: parked(ow, handle.run_id, "signal", step="two"))
    assert b.replay_cache is not None and (b.replay_cache.hits, b.replay_cache.misses) == (0, 1)
    # Worker a again, with the state it kept: b's claim since then casts doubt on it.
    again = ow.worker(worker_id="a", poll_interval="50ms")
    again.replay_cache = a.replay_cache
    async with serving(again):
        await ow.send_signal("two", "y")
        assert await handle.result(timeout=20) == ["a", "x", "b", "y"]
    assert (a.replay_cache.hits, a.replay_cache.misses) == (0, 1)
    mine = [(after, seqs) for run_id, after, seqs in reads if run_id == handle.run_id]
    # b read it whole; a tried the events after its state, saw b's claim, and read it whole.
    assert [after for after, _ in mine] == [0, mine[1][0], 0]
    assert mine[1][0] > 0 and mine[2][1][0] == 1
    events = await ow.history(handle.run_id)
    assert [e.data["worker_id"] for e in events if e.type == "run_claimed"] == ["a", "b", "a"]


async def test_every_history_from_the_replay_cache_equals_a_full_read(
    ow: ow_es.OpenWorkflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workflow with every kind of park (sleeps, step retries, RetryAfter, a signal, a child,
    a retry of its body): each history a load built equals the fold of a full read."""
    tries: dict[str, int] = {}
    fast = ow_es.RetryPolicy(initial_interval="100ms", maximum_interval="100ms")

    def once_more(name: str, times: int) -> bool:
        tries[name] = tries.get(name, 0) + 1
        return tries[name] <= times

    @ow.workflow(name="child")
    async def child(ctx: ow_es.Context, n: int) -> int:
        await ctx.step.sleep("nap", "100ms")
        return n * 2

    @ow.workflow(name="varied", retry=fast)
    async def varied(ctx: ow_es.Context) -> list[Any]:
        async def flaky() -> str:
            if once_more("flaky", 2):
                raise RuntimeError("not yet")
            return "flaky"

        async def busy() -> str:
            if once_more("busy", 1):
                raise ow_es.RetryAfter("100ms")
            return "busy"

        async def echo(value: int) -> int:
            return value

        got: list[Any] = list(
            await asyncio.gather(ctx.step.run("p", lambda: echo(1)), ctx.step.run("q", busy))
        )
        got.append(await ctx.step.run("flaky", flaky, retry=fast))
        await ctx.step.sleep("nap", "100ms")
        got.append(await ctx.step.wait_for_signal("go", timeout="30s"))
        got.append(await ctx.step.run_workflow(child, 21))
        await ctx.step.sleep("nap", "100ms")
        if once_more("body", 1):
            raise RuntimeError("the body fails once")
        return got

    loads: list[History] = []
    real_replay = replay_cache.replay

    async def replay(store: Any, run: Any, cache: ReplayCache | None) -> Replayed:
        replayed = await real_replay(store, run, cache)
        if run.workflow_name == "varied":
            loads.append(replayed.history.copy())  # the cache changes it later, in place
        return replayed

    monkeypatch.setattr(executor, "replay", replay)
    await ow.connect()
    handle = await varied.start()
    async with running_worker(ow, poll_interval="50ms") as worker:
        await eventually(lambda: parked(ow, handle.run_id, "signal"), timeout=20)
        await ow.send_signal("go", "went")
        assert await handle.result(timeout=30) == [1, "busy", "flaky", "went", 42]
    events = await ow.history(handle.run_id)
    assert {"retry_scheduled", "run_sleeping", "run_waiting", "signal_received"} <= {
        e.type for e in events
    }
    assert worker.replay_cache is not None and worker.replay_cache.hits >= 6
    assert len(loads) == [e.type for e in events].count("run_claimed")
    for history in loads:
        assert history == History.of([e for e in events if e.seq <= history.seq])


def test_the_replay_cache_evicts_the_least_recently_parked_runs_past_its_size() -> None:
    def state(size: int) -> Replayed:
        return Replayed(History(seq=3), size, _AT)

    cache = ReplayCache(max_bytes=1000)
    cache.put("a", state(400))
    cache.put("b", state(400))
    assert cache.bytes == 800
    cache.put("c", state(400))  # 1200 bytes: a, the oldest, goes
    assert ("a" in cache, "b" in cache, "c" in cache) == (False, True, True)
    cache.put("b", state(300))  # parked again: b is now the newest
    cache.put("d", state(500))  # 1200 bytes again: c goes, not b
    assert ("b" in cache, "c" in cache, "d" in cache) == (True, False, True)
    assert cache.bytes == 800
    cache.put("huge", state(1001))  # larger than the whole cache: not kept, nothing evicted
    assert "huge" not in cache and len(cache) == 2 and cache.bytes == 800
    taken = cache.take("b")
    assert taken is not None and taken.size == 300 and cache.bytes == 500
    assert cache.take("b") is None  # taken means gone: no two executions share a history


# -- the property: a history from the cache is the one a full read gives ----------------------

_AT = datetime(2025, 1, 1, tzinfo=UTC)
_times = st.integers(0, 10_000).map(lambda s: _AT + timedelta(seconds=s))
_names = st.sampled_from(["a", "b", "a:1"])
_kinds = st.sampled_from(["function", "sleep", "workflow", "signal_wait"])
_attempts = st.integers(1, 3)
_errors = st.fixed_dictionaries({"type": st.sampled_from(["E", "F"]), "message": st.just("m")})
_step_events: st.SearchStrategy[ev.EventData] = st.one_of(
    st.builds(ev.StepStarted, step_name=_names, kind=_kinds, attempt=_attempts),
    st.builds(
        ev.StepCompleted,
        step_name=_names,
        kind=_kinds,
        attempt=_attempts,
        output=st.integers(),
        started_at=_times,
    ),
    st.builds(
        ev.StepFailed,
        step_name=_names,
        kind=_kinds,
        attempt=_attempts,
        error=_errors,
        started_at=_times,
        final=st.booleans(),
        counted=st.booleans(),
        abandoned=st.booleans(),
    ),
    st.builds(ev.RetryScheduled, step_name=st.none() | _names, attempt=_attempts, until=_times),
    st.builds(ev.RunResumed),
    st.builds(
        ev.RunReleased, worker_id=st.just("w"), reason=st.just("r"), error=st.none() | _errors
    ),
    st.builds(ev.RunSleeping, step_name=_names, until=_times),
    st.builds(ev.RunWaiting, step_name=_names, kind=st.sampled_from(["signal", "child"])),
    st.builds(
        ev.SignalReceived,
        signal_name=st.just("s"),
        step_name=_names,
        attempt=_attempts,
        started_at=_times,
        data=st.integers(),
    ),
    st.builds(
        ev.ChildFinished,
        step_name=_names,
        child_run_id=st.just("c"),
        status=st.sampled_from(["completed", "failed"]),
    ),
)
# A claim's events, and what happened before the claim: nothing else (the same worker parked
# the run and claims it again), another worker's claim in between, or the entry was evicted.
_claims = st.tuples(
    st.lists(_step_events, max_size=8), st.sampled_from(["mine", "another", "evicted"])
)


class _Log:
    """One run's events in memory, read as the store reads them."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def append(self, data: ev.EventData) -> None:
        seq = len(self.events) + 1
        at = _AT + timedelta(milliseconds=seq)
        self.events.append(
            Event(
                namespace_id="ns",
                run_id="r",
                position=seq,
                seq=seq,
                type=data.TYPE,
                schema_version=data.SCHEMA_VERSION,
                data=ev.to_dict(data),
                created_at=at,
            )
        )

    async def read_run_events(self, run_id: str, after: int = 0) -> list[Event]:
        return [e for e in self.events if e.seq > after]


@settings(max_examples=300, deadline=None)
@given(claims=st.lists(_claims, min_size=1, max_size=6))
def test_a_history_from_the_replay_cache_equals_the_fold_of_a_full_read(
    claims: list[tuple[list[ev.EventData], str]],
) -> None:
    asyncio.run(_claim_and_park(claims))


async def _claim_and_park(claims: list[tuple[list[ev.EventData], str]]) -> None:
    log, cache, hits = _Log(), ReplayCache(max_bytes=10**9), 0
    log.append(ev.RunCreated(workflow_name="wf", available_at=_AT))
    for i, (events, before) in enumerate(claims):
        if before == "another":
            log.append(ev.RunClaimed(worker_id="other", claim_token=f"o{i}", lease_until=_AT))
            log.append(ev.RunReleased(worker_id="other", reason="stopped"))
        elif before == "evicted":
            cache.take("r")
        log.append(ev.RunClaimed(worker_id="w", claim_token=f"t{i}", lease_until=_AT))
        run = WorkflowRun(
            namespace_id="ns",
            id="r",
            workflow_name="wf",
            version=None,
            status="running",
            claim_token=f"t{i}",
            seq=len(log.events),
            created_at=_AT,
            updated_at=_AT,
        )
        hits += "r" in cache and before == "mine"
        replayed = await replay_cache.replay(cast(Store, log), run, cache)
        assert replayed.history == History.of(log.events)
        assert cache.hits == hits and "r" not in cache
        # The execution changes its own copy (attempts it begins, steps it closes), never
        # the state the cache keeps.
        working = replayed.history.copy()
        working.function_attempts += 1
        working.attempts["a"] = 99
        working.add(run.seq + 1, _AT, ev.StepStarted(step_name="b", kind="function", attempt=7))
        assert replayed.history == History.of(log.events)
        for data in events:
            log.append(data)
        cache.put("r", replayed)  # parked
