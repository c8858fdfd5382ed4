"""Chaos on the database connections.

On PostgreSQL the workers' server sessions (pool and LISTEN connection) are terminated again
and again while they work; they are found by an ``application_name`` set in the workers' URL,
so no other session of the cluster is touched. An append whose commit outcome is unknown must
be re-read, never appended twice; no run may be lost or fail because of it. The same fault
(a lost commit reply, then a failed re-read) is also injected at the store port, on both
backends, to pin the rule down deterministically."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

import ow_es
from ow_es.store.postgres.wake import PostgresWakeChannel
from tests.support.auditors import (
    audit_attempts,
    audit_executions,
    audit_log,
    describe,
    read_executions,
    statuses,
    superseded,
)
from tests.support.fleet import Fleet
from tests.support.processes import Processes
from tests.support.waiting import eventually
from tests.support.workers import running_worker


@pytest.fixture
async def pg_client(pg_db: dict[str, Any]) -> AsyncIterator[ow_es.OpenWorkflow]:
    ow = ow_es.OpenWorkflow(pg_db["url"], schema=pg_db["schema"])
    try:
        yield ow
    finally:
        await ow.close()


@pytest.mark.slow
async def test_dropped_connections_lose_nothing_and_append_nothing_twice(
    pg_client: ow_es.OpenWorkflow, pg_db: dict[str, Any], processes: Processes
) -> None:
    ow = pg_client
    await ow.connect()
    total = 60
    seed = time.time_ns() % 100_000
    rng = random.Random(seed)
    fleet = Fleet(pg_db, processes)
    try:
        handles = [await ow.start("chaos", n) for n in range(total)]
        workers = [fleet.spawn(lease="3s", heartbeat="500ms") for _ in range(2)]
        for proc in workers:
            await fleet.ready(proc)
        terminated = 0
        for _ in range(40):
            await asyncio.sleep(rng.uniform(0.03, 0.15))
            terminated += fleet.terminate_pg_sessions()
            if (await statuses(ow))["completed"] == total:
                break

        async def settled() -> bool:
            counts = await statuses(ow)
            return counts["pending"] + counts["running"] == 0

        await eventually(settled, 60, "every run finished")
        alive = [p.alive() for p in workers]
    finally:
        codes = fleet.stop_all()
    assert terminated > 0
    # A lost connection is an ordinary event: no worker process may die of it.
    assert alive == [True, True], fleet.logs()
    assert set(codes.values()) == {0}, (codes, fleet.logs())
    counts = await statuses(ow)
    assert counts["completed"] == total, (f"seed {seed}", counts, await _failures(ow))

    problems: list[str] = []
    evidence: list[str] = []
    for n, handle in enumerate(handles):
        events = await ow.history(handle.run_id)
        rows = await ow.store.step_attempts(handle.run_id)
        executions = read_executions(fleet.state, handle.run_id)
        found = [
            *audit_log(events),
            *audit_attempts(events, rows),
            *audit_executions(events, executions, superseded(events)),
        ]
        if (await handle.status()).output != [n, 2 * n, 3 * n, 4 * n, 5 * n]:
            found.append("wrong output")
        problems += [f"run {n} ({handle.run_id}): {p}" for p in found]
        if found and len(evidence) < 3:
            evidence.append(f"run {n} ({handle.run_id}):\n{describe(events)}")
    assert not problems, "\n".join([f"seed {seed}:", *problems[:40], *evidence, fleet.logs()])
    report = await ow.reproject(verify=True)
    assert report.differences == [], report.differences[:10]


async def _failures(ow: ow_es.OpenWorkflow) -> list[Any]:
    page = await ow.list_runs(status="failed", limit=5)
    return [run.error for run in page.runs]


@pytest.mark.slow
async def test_listener_backoff_starts_over_after_a_healthy_reconnection(
    pg_db: dict[str, Any],
) -> None:
    """Each time the LISTEN connection is lost, the worker reconnects and claims at once.
    Five losses spread over time (each after a successful reconnection) are five separate
    incidents: the sixth must again be followed by a quick reconnection, not by a delay that
    doubled with every earlier, long-healed incident."""
    app_name = f"owc_{uuid.uuid4().hex[:12]}"
    url = f"{pg_db['url']}{'&' if '?' in pg_db['url'] else '?'}application_name={app_name}"
    ow = ow_es.OpenWorkflow(url, schema=pg_db["schema"])

    @ow.workflow(name="echo")
    async def echo(ctx: ow_es.Context, value: int) -> int:
        return value

    def kill_listener() -> int:
        with psycopg.connect(pg_db["url"], autocommit=True) as admin:
            return len(
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s AND query LIKE 'LISTEN%%'",
                    [app_name],
                ).fetchall()
            )

    try:
        await ow.connect()
        wake = ow.store.wake_channel()
        assert isinstance(wake, PostgresWakeChannel)  # whose ``connected`` the test watches
        # A long fallback poll: only the listener can start a run quickly.
        async with running_worker(ow, poll_interval="30s"):
            assert await (await echo.start(0)).result(timeout=10) == 0
            for _ in range(5):
                assert kill_listener() == 1
                await eventually(lambda: not wake.connected, 5, "the listener noticed")
                await eventually(lambda: wake.connected, 15, "the listener reconnected")
                await asyncio.sleep(0.3)  # healthy for a while
            assert kill_listener() == 1
            await eventually(lambda: not wake.connected, 5, "the listener noticed")
            began = time.perf_counter()
            handle = await echo.start(6)
            assert await handle.result(timeout=30) == 6
            elapsed = time.perf_counter() - began
    finally:
        await ow.close()
    assert elapsed < 1.0, f"the run waited {elapsed:.2f}s for the listener to come back"


async def test_unknown_commit_outcome_then_a_failed_reread_appends_nothing_twice(
    ow: ow_es.OpenWorkflow,
) -> None:
    """The connection drops as a step's completion commits (it landed, the worker cannot
    know), and the first re-read fails too, as it does when a whole pool was cut off. The
    worker must find out before it appends again: one completion in the log, not two."""
    calls: list[str] = []

    @ow.workflow(name="once")
    async def once(ctx: ow_es.Context) -> int:
        async def step() -> int:
            calls.append("step")
            return 1

        return await ctx.step.run("step", step)

    await ow.connect()
    store = ow.store
    real_append, real_read = store.append, store.read_run_events
    faults = {"commit": 1, "reread": 0}

    async def append(requests: Any) -> Any:
        outcomes = await real_append(requests)
        completes = any(e.TYPE == "step_completed" for r in requests for e in r.events)
        if completes and faults["commit"]:
            faults["commit"] -= 1
            faults["reread"] = 1
            raise ow_es.StoreUnavailable("simulated: connection lost while committing")
        return outcomes

    async def read_run_events(run_id: str, after: int = 0) -> Any:
        if faults["reread"]:
            faults["reread"] -= 1
            raise ow_es.StoreUnavailable("simulated: the pool's next connection is dead too")
        return await real_read(run_id, after)

    store.append = append  # type: ignore[method-assign]
    store.read_run_events = read_run_events  # type: ignore[method-assign]
    handle = await once.start()
    async with running_worker(ow, lease="5s"):
        assert await handle.result(timeout=20) == 1
    assert faults == {"commit": 0, "reread": 0}  # both faults were hit
    events = await ow.history(handle.run_id)
    assert audit_log(events) == [], describe(events)
    assert calls == ["step"]


async def test_unknown_outcome_of_a_batch_with_parallel_steps_appends_each_once(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Two parallel steps start in one group commit whose outcome is lost. Each finds its own
    start in the log; the first to find it moves the run's position on, which must not hide
    the second's start from it (it would append it again)."""

    @ow.workflow(name="pair")
    async def pair(ctx: ow_es.Context) -> list[int]:
        async def one() -> int:
            await asyncio.sleep(0.2)  # past the grace period, so its start is recorded
            return 1

        async def two() -> int:
            await asyncio.sleep(0.2)
            return 2

        return list(await asyncio.gather(ctx.step.run("b", one), ctx.step.run("c", two)))

    await ow.connect()
    store = ow.store
    real_append = store.append
    batches: list[set[str]] = []

    async def append(requests: Any) -> Any:
        outcomes = await real_append(requests)
        started = {e.step_name for r in requests for e in r.events if e.TYPE == "step_started"}
        if not batches and started:
            batches.append(started)
            raise ow_es.StoreUnavailable("simulated: connection lost while committing")
        return outcomes

    store.append = append  # type: ignore[method-assign]
    handle = await pair.start()
    async with running_worker(ow, lease="5s"):
        assert await handle.result(timeout=20) == [1, 2]
    assert batches == [{"b", "c"}]  # both starts shared the commit whose outcome was lost
    events = await ow.history(handle.run_id)
    assert audit_log(events) == [], describe(events)


async def test_unknown_outcome_of_a_signal_send_or_child_start_is_resolved_not_raised(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Sending a signal and starting a child go through the same submit path as step records:
    when the reply to their commit is lost (it landed), the worker reads the log to find out
    instead of failing the run, and neither the delivery nor the child is made twice."""

    @ow.workflow(name="double")
    async def double(ctx: ow_es.Context, n: int) -> int:
        return n * 2

    @ow.workflow(name="waiter")
    async def waiter(ctx: ow_es.Context) -> Any:
        return await ctx.step.wait_for_signal("go")

    @ow.workflow(name="sender")
    async def sender(ctx: ow_es.Context) -> list[Any]:
        reached = await ctx.step.send_signal("go", {"x": 1})
        doubled = await ctx.step.run_workflow(double, 21)
        return [reached, doubled]

    await ow.connect()
    store = ow.store
    real_append = store.append
    lost: list[str] = []

    async def append(requests: Any) -> Any:
        outcomes = await real_append(requests)
        for kind in ("signal", "child"):
            if kind not in lost and any(getattr(r, kind) is not None for r in requests):
                lost.append(kind)
                raise ow_es.StoreUnavailable("simulated: connection lost while committing")
        return outcomes

    store.append = append  # type: ignore[method-assign]
    waiting = await waiter.start()
    async with running_worker(ow, lease="5s"):
        await eventually(lambda: _waits_for_signal(ow, waiting.run_id), timeout=20)
        sending = await sender.start()
        assert await sending.result(timeout=20) == [[waiting.run_id], 42]
        assert await waiting.result(timeout=20) == {"x": 1}
    assert lost == ["signal", "child"]  # both commits' replies were lost
    for handle in (waiting, sending):
        events = await ow.history(handle.run_id)
        assert audit_log(events) == [], describe(events)
    received = [e for e in await ow.history(waiting.run_id) if e.type == "signal_received"]
    assert len(received) == 1
    children = await ow.store.list_children(sending.run_id)
    assert [c.workflow_name for c in children] == ["double"]


async def _waits_for_signal(ow: ow_es.OpenWorkflow, run_id: str) -> bool:
    run = await ow.store.get_run(run_id)
    return run is not None and (run.waiting_for or {}).get("kind") == "signal"


async def test_client_calls_ride_out_terminated_connections(pg_db: dict[str, Any]) -> None:
    """Every pooled connection of the client is terminated (a failover, a restart). The next
    calls must not fail: reads and not-yet-committed writes are sent again on a fresh
    connection, and the pool's dead connections are replaced."""
    app_name = f"owc_{uuid.uuid4().hex[:12]}"
    url = f"{pg_db['url']}{'&' if '?' in pg_db['url'] else '?'}application_name={app_name}"
    ow = await ow_es.connect(url, schema=pg_db["schema"], pool_size=4)

    def terminate() -> int:
        with psycopg.connect(pg_db["url"], autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                [app_name],
            ).fetchall()
        return len(rows)

    try:
        handles = [await ow.start("wf", n) for n in range(4)]  # warms several connections
        for call in (
            lambda: ow.start("wf", 9),
            lambda: ow.list_runs(),
            lambda: ow.history(handles[0].run_id),
            lambda: ow.send_signal("nobody-waits"),
            lambda: ow.cancel(handles[1].run_id),
            lambda: ow.store.claim("w-1", [("wf", None)], 1, 30),
        ):
            assert terminate() >= 1
            await call()
        assert (await handles[1].status()).status == "canceled"
    finally:
        await ow.close()


@pytest.mark.slow
async def test_a_worker_keeps_claiming_between_repeated_connection_kills(
    pg_db: dict[str, Any],
) -> None:
    """Every 300 ms all of a worker's sessions are terminated; its runs still complete, and
    none fails because of it."""
    app_name = f"owc_{uuid.uuid4().hex[:12]}"
    url = f"{pg_db['url']}{'&' if '?' in pg_db['url'] else '?'}application_name={app_name}"
    ow = ow_es.OpenWorkflow(url, schema=pg_db["schema"])

    @ow.workflow(name="three-steps")
    async def three_steps(ctx: ow_es.Context, n: int) -> int:
        async def slow() -> int:
            await asyncio.sleep(0.2)  # several kills land while the runs are in flight
            return n

        total = 0
        for step in range(3):
            total += await ctx.step.run(f"s{step}", slow)
        return total

    stop = asyncio.Event()

    async def kill_repeatedly() -> int:
        kills = 0
        while not stop.is_set():
            await asyncio.sleep(0.3)
            with psycopg.connect(pg_db["url"], autocommit=True) as admin:
                kills += len(
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = %s",
                        [app_name],
                    ).fetchall()
                )
        return kills

    try:
        await ow.connect()
        handles = [await three_steps.start(n) for n in range(20)]
        killer = asyncio.create_task(kill_repeatedly())
        try:
            async with running_worker(ow, concurrency=5, lease="3s", heartbeat="500ms"):
                results = [await h.result(timeout=60) for h in handles]
        finally:
            stop.set()
            kills = await killer
        assert results == [3 * n for n in range(20)]
        assert kills >= 5
        for handle in handles:
            events = await ow.history(handle.run_id)
            assert audit_log(events) == [], describe(events)
    finally:
        await ow.close()


async def test_a_one_statement_claim_whose_reply_is_lost_finds_its_runs(
    pg_client: ow_es.OpenWorkflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim committed, then the connection failed before its rows came back: the claim
    tokens it made find the runs it holds, so none waits out a lease nobody holds."""
    from ow_es.errors import StoreUnavailable
    from ow_es.store.postgres.store import PostgresStore

    ow = pg_client
    await ow.connect()
    ids = {(await ow.start("wf", n)).run_id for n in range(3)}
    adapter = ow.store.adapter
    assert isinstance(adapter, PostgresStore)
    real = adapter.connection
    lost: list[str] = []

    @contextlib.asynccontextmanager
    async def reply_lost(what: str) -> AsyncIterator[Any]:
        async with real(what) as conn:
            yield conn
        if what == "claiming runs" and not lost:
            lost.append(what)  # once: the statement ran and committed; its reply is gone
            raise StoreUnavailable("PostgreSQL unavailable while claiming runs: connection lost")

    monkeypatch.setattr(adapter, "connection", reply_lost)
    claimed = await ow.store.claim("w-1", [("wf", None)], 10, 30)
    assert lost and {r.id for r in claimed} == ids
    assert all(r.worker_id == "w-1" and r.claim_token for r in claimed)
    assert await ow.store.claim("w-2", [("wf", None)], 10, 30) == []
