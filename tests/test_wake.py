"""The wake-up path: LISTEN/NOTIFY starts runs at once, survives a lost connection, and
result() waits on it without holding pool connections."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import psycopg
import pytest

import ow_es
from ow_es.store.port import Claimed
from ow_es.store.postgres.wake import Channels
from ow_es.store.wake import Lane
from tests.support.databases import ClientFactory
from tests.support.waiting import eventually
from tests.support.workers import running_worker, slot_holder


async def test_listener_reconnects_after_its_connection_dies(pg_url: str) -> None:
    """Postgres only: SQLite has no listener connection (its workers poll)."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    ow = ow_es.OpenWorkflow(pg_url, schema=schema)
    try:
        await _reconnect_scenario(ow, pg_url, schema)
    finally:
        await ow.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _reconnect_scenario(ow: ow_es.OpenWorkflow, url: str, schema: str) -> None:

    @ow.workflow(name="echo")
    async def echo(ctx: ow_es.Context, value: int) -> int:
        return value

    await ow.connect()
    # A long fallback poll: only a notification can start a run quickly.
    async with running_worker(ow, poll_interval="30s"):
        first = await echo.start(1)
        assert await first.result(timeout=5) == 1
        # Its last statement LISTENs on one of the namespace's channels (the worker's lane).
        prefix = Channels.of(schema, "default").ready.removesuffix("ready")
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE %s AND pid <> pg_backend_pid()",
                [f"LISTEN %{prefix}%"],
            ).fetchall()
        assert killed, "no listener connection found"
        await asyncio.sleep(0.5)  # the listener notices and reconnects (backoff from 0.1 s)
        began = time.perf_counter()
        second = await echo.start(2)
        assert await second.result(timeout=10) == 2
        assert time.perf_counter() - began < 5  # woken by NOTIFY, not the 30 s poll


async def test_a_thousand_result_waiters_hold_no_pool_connection(
    make_client: ClientFactory,
) -> None:
    ow = await make_client(pool_size=4)

    @ow.workflow(name="gate")
    async def gate(ctx: ow_es.Context) -> str:
        return await ctx.step.wait_for_signal("open") or "timeout"

    await ow.connect()
    async with running_worker(ow, concurrency=5):
        handles = [await gate.start() for _ in range(5)]
        waiters = [asyncio.create_task(handles[i % 5].result(timeout=60)) for i in range(1000)]
        await asyncio.sleep(0.5)
        # The pool (4 connections) still serves other calls while 1000 waiters wait.
        async with asyncio.timeout(5):
            assert len((await ow.list_runs(limit=10)).runs) == 5
        for _ in range(50):
            if len(await ow.send_signal("open", "go")) == 5:
                break
            await asyncio.sleep(0.1)
        results = await asyncio.gather(*waiters)
    assert results == ["go"] * 1000


async def test_every_waiter_of_a_process_sees_every_ready_signal(ow: ow_es.OpenWorkflow) -> None:
    """A worker loop and a dashboard stream in one process each see a 'run may be ready'
    signal: one waiting does not take it from the other, and one that came while a waiter
    was busy is still seen by its next wait."""
    await ow.connect()
    wake = ow.store.wake_channel()
    await wake.start()
    first, second = wake.ready_waiter(), wake.ready_waiter()
    await ow.start("wf")  # a new run: workers are told
    assert await first.wait(5) is True
    assert await second.wait(5) is True  # not taken by the first
    assert await first.wait(0.05) is False  # nothing new since


async def test_an_idle_worker_claims_on_a_wake_up_not_after_each_run_it_ends(
    pg_db: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL (wake-ups are pushed): a run this worker ends readies no other, so claiming
    then would find nothing. Runs started one at a time are each claimed by the claim their
    NOTIFY caused, and almost no claim comes back empty. The NOTIFY names the run (it went to
    this worker's lane), so the claim is of that run by its id: the lighter statement. The
    runs are started by another client (a client's starts go to its own worker unclaimed)."""
    ow = ow_es.OpenWorkflow(str(pg_db["url"]), schema=str(pg_db["schema"]))
    starter = ow_es.OpenWorkflow(str(pg_db["url"]), schema=str(pg_db["schema"]))

    @ow.workflow(name="one")
    async def one(ctx: ow_es.Context, n: int) -> int:
        return await ctx.step.run("twice", lambda: n * 2)

    await ow.connect()
    await starter.connect()
    try:
        claims: list[int] = []
        by_id: list[str] = []
        real = ow.store.claim_ready
        single = ow.store.adapter.single
        assert single is not None
        claim_offered = single.claim_offered

        async def counted(*args: Any, **kwargs: Any) -> Claimed:
            claimed = await real(*args, **kwargs)
            claims.append(len(claimed.runs))
            return claimed

        async def offered(*args: Any) -> Claimed | None:
            claimed = await claim_offered(*args)
            if claimed is not None:
                by_id.extend(run.id for run in claimed.runs)
            return claimed

        monkeypatch.setattr(ow.store, "claim_ready", counted)
        monkeypatch.setattr(single, "claim_offered", offered)
        async with running_worker(ow, poll_interval="30s"):
            handles = []
            for n in range(10):
                handles.append(await starter.start("one", n))
                assert await handles[-1].result(timeout=10) == 2 * n
        assert sum(claims) == 10
        assert claims.count(0) <= 2, claims  # the first claim at start, and a spare at most
        assert by_id == [h.run_id for h in handles]
    finally:
        await starter.close()
        await ow.close()


def test_a_lane_names_its_run_only_when_one_wake_up_came_and_it_named_one() -> None:
    lane = Lane("lane")
    lane.offer("a")
    assert lane.take_offered() is None  # the first claim looks at everything
    lane.offer("a")
    assert lane.take_offered() == "a"
    assert lane.take_offered() is None  # taken
    lane.offer("a")
    lane.offer("b")
    assert lane.take_offered() is None  # two runs: the usual claim
    lane.offer("a")
    lane.offer(None)  # a wake-up for every worker came too
    assert lane.take_offered() is None
    lane.offer("")  # a wake-up that named no run (a rebroadcast)
    assert lane.take_offered() is None


# -- targeted wake-ups: one run made ready wakes one worker (its lane), not every worker ----


class _Claims:
    """Counts a client's claims from the inside (its store's ``claim_ready``, which the worker
    loop calls), as ``benchmarks/worker_app.py`` does."""

    def __init__(self, ow: ow_es.OpenWorkflow) -> None:
        self.calls = 0
        self.empty = 0
        self._claim = ow.store.claim_ready
        ow.store.claim_ready = self._counted  # type: ignore[method-assign]

    async def _counted(self, *args: Any, **kwargs: Any) -> Claimed:
        claimed = await self._claim(*args, **kwargs)
        self.calls += 1
        self.empty += not claimed.runs
        return claimed

    def reset(self) -> None:
        self.calls = self.empty = 0


@contextlib.asynccontextmanager
async def _clients(pg_db: dict[str, object], count: int) -> AsyncIterator[list[ow_es.OpenWorkflow]]:
    """``count`` clients on one schema: each worker on one gets a listener connection of its
    own, as a worker process would."""
    clients = [
        ow_es.OpenWorkflow(str(pg_db["url"]), schema=str(pg_db["schema"])) for _ in range(count)
    ]
    try:
        yield clients
    finally:
        for ow in clients:
            await ow.close()


def _lane_wakes(worker: ow_es.Worker) -> int:
    """The wake-ups that came on this worker's lane so far."""
    return worker._lane.seen


def _twice(ow: ow_es.OpenWorkflow, name: str = "twice", version: str | None = None) -> None:
    @ow.workflow(name=name, version=version)
    async def twice(ctx: ow_es.Context, n: int) -> int:
        return await ctx.step.run("twice", lambda: n * 2)


async def test_a_run_started_on_an_idle_fleet_wakes_one_worker_not_every_one(
    pg_db: dict[str, object],
) -> None:
    """Four idle workers, each with its own listener: a start's NOTIFY goes to one worker's
    lane, so runs started one at a time are claimed with next to no claim that finds nothing
    (a broadcast made every worker claim: three empty claims per run). A fifth client, which
    runs no worker, starts them."""
    async with _clients(pg_db, 5) as (*clients, starter):
        for ow in (*clients, starter):
            _twice(ow)
            await ow.connect()
        counts = [_Claims(ow) for ow in clients]
        async with contextlib.AsyncExitStack() as stack:
            workers = [
                await stack.enter_async_context(running_worker(ow, poll_interval="30s"))
                for ow in clients
            ]
            for count in counts:
                count.reset()  # the claims each worker made as it started
            for n in range(20):
                assert await (await starter.start("twice", n)).result(timeout=10) == 2 * n
            calls = sum(c.calls for c in counts)
            empty = sum(c.empty for c in counts)
            assert calls - empty == 20, [(c.calls, c.empty) for c in counts]
            assert empty <= 20, [(c.calls, c.empty) for c in counts]  # a herd: 60
            assert sum(_lane_wakes(w) for w in workers) >= 20  # told on their lanes


async def test_a_wake_up_for_a_full_worker_is_passed_on_at_once(pg_db: dict[str, object]) -> None:
    """The chosen worker has no free slot (the registry's ``busy`` is as of its last
    heartbeat): it passes the wake-up on to every worker, and another starts the run well
    before the fallback poll. A third client, which runs no worker, starts the run."""
    async with _clients(pg_db, 3) as (first, second, starter):
        for ow in (first, second, starter):
            _twice(ow)

        gate = asyncio.Event()
        hold = slot_holder(first, gate)  # each run holds its slot until the gate opens

        for ow in (first, second, starter):
            await ow.connect()
        async with (
            running_worker(first, concurrency=1, poll_interval="30s") as full,
            running_worker(second, concurrency=1, poll_interval="30s") as other,
        ):
            held = await hold.start()  # only the first serves it: it is full now
            await eventually(lambda: full.busy_slots == 1, timeout=10)
            with psycopg.connect(str(pg_db["url"]), autocommit=True) as admin:
                # The second looks busier: the first (0 of 1 busy, as it last beat) is chosen.
                admin.execute(
                    f'UPDATE "{pg_db["schema"]}".workers SET busy = 1 WHERE id = %s',
                    [other.worker_id],
                )
            told = _lane_wakes(full)
            began = time.perf_counter()
            handle = await starter.start("twice", 21)
            assert await handle.result(timeout=10) == 42
            assert time.perf_counter() - began < 0.5  # the poll is 30 s
            assert _lane_wakes(full) == told + 1  # it went to the full worker's lane
            assert (await _worker_of(second, handle.run_id)) == other.worker_id
            gate.set()
            assert await held.result(timeout=10) == "go"


async def _worker_of(ow: ow_es.OpenWorkflow, run_id: str) -> str | None:
    """The worker that claimed the run (its ``run_claimed`` event)."""
    claimed = [e for e in await ow.history(run_id) if e.type == "run_claimed"]
    return str(claimed[-1].data["worker_id"]) if claimed else None


async def test_a_run_is_told_to_a_worker_that_serves_its_workflow(
    pg_db: dict[str, object],
) -> None:
    """Only a worker serving the run's workflow name and version is chosen: another worker
    (another workflow, or another version of it) is neither told nor claims."""
    async with _clients(pg_db, 2) as (serving, other):
        _twice(serving, "alpha", version="1")
        _twice(other, "alpha", version="2")
        _twice(other, "beta")
        for ow in (serving, other):
            await ow.connect()
        counts = [_Claims(ow) for ow in (serving, other)]
        async with (
            running_worker(serving, poll_interval="30s") as chosen,
            running_worker(other, poll_interval="30s") as bystander,
        ):
            for count in counts:
                count.reset()
            told = _lane_wakes(bystander)
            for n in range(10):
                handle = await other.start("alpha", n, version="1")
                assert await handle.result(timeout=10) == 2 * n
            assert _lane_wakes(chosen) >= 10
            assert _lane_wakes(bystander) == told
            assert counts[1].calls == 0  # never woken
            assert counts[0].calls - counts[0].empty == 10


async def test_several_runs_made_ready_in_one_transaction_wake_every_worker(
    pg_db: dict[str, object],
) -> None:
    """One signal that wakes two waiting runs makes both ready in one transaction: that is
    still told to every worker (a broadcast), not to one lane."""
    async with _clients(pg_db, 2) as clients:
        for ow in clients:

            @ow.workflow(name="waits")
            async def waits(ctx: ow_es.Context) -> Any:
                return await ctx.step.wait_for_signal("go")

            await ow.connect()
        counts = [_Claims(ow) for ow in clients]
        async with (
            running_worker(clients[0], poll_interval="30s") as first,
            running_worker(clients[1], poll_interval="30s") as second,
        ):
            handles = [await clients[0].start("waits") for _ in range(2)]
            for handle in handles:
                await eventually(partial(_parked, clients[0], handle.run_id), timeout=10)
            for count in counts:
                count.reset()
            told = (_lane_wakes(first), _lane_wakes(second))
            assert sorted(await clients[0].send_signal("go", 1)) == sorted(
                h.run_id for h in handles
            )
            assert [await h.result(timeout=10) for h in handles] == [1, 1]
            assert (_lane_wakes(first), _lane_wakes(second)) == told  # no lane: a broadcast
            assert all(count.calls >= 1 for count in counts), [c.calls for c in counts]


async def _parked(ow: ow_es.OpenWorkflow, run_id: str) -> bool:
    """The run waits for its signal and no worker holds it."""
    run = await ow.store.get_run(run_id)
    return bool(run and run.waiting_for and run.claim_token is None)


async def test_a_wake_up_lost_with_a_dead_worker_waits_for_the_fallback_poll(
    pg_db: dict[str, object],
) -> None:
    """A worker that died without leaving the registry counts as live until its ttl: a
    wake-up sent to its lane is lost, and the run waits for another worker's fallback poll
    (the price of no herd). It still starts, within about one ``poll_interval``."""
    async with _clients(pg_db, 1) as (ow,):
        _twice(ow)
        await ow.connect()
        async with running_worker(ow, poll_interval="300ms") as alive:
            with psycopg.connect(str(pg_db["url"]), autocommit=True) as admin:
                workers = f'"{pg_db["schema"]}".workers'
                # A dead worker's fresh row (nobody listens on its lane) looks idlest.
                admin.execute(
                    f"INSERT INTO {workers} (namespace_id, id, host, pid, workflows,"
                    " concurrency, busy, ttl_seconds, started_at, heartbeat_at, lane)"
                    " VALUES ('default', 'dead', 'gone', 1, '[[\"twice\", null]]', 10, 0, 60,"
                    " now(), now(), %s)",
                    [Channels.of(str(pg_db["schema"]), "default").lane("dead")],
                )
                admin.execute(f"UPDATE {workers} SET busy = 5 WHERE id = %s", [alive.worker_id])
            told = _lane_wakes(alive)
            handle = await ow.start("twice", 4)
            assert await handle.result(timeout=10) == 8  # by the poll
            assert _lane_wakes(alive) == told  # the wake-up went to the dead worker's lane
