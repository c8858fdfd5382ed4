"""The wake-up path: LISTEN/NOTIFY starts runs at once, survives a lost connection, and
result() waits on it without holding pool connections."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest

import ow_es
from ow_es.store.port import Claimed
from ow_es.store.postgres.wake import Channels
from tests.support.databases import ClientFactory
from tests.support.workers import running_worker


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
        done_channel = Channels.of(schema, "default").done
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE %s AND pid <> pg_backend_pid()",
                [f"%{done_channel}%"],
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
    NOTIFY caused, and almost no claim comes back empty."""
    ow = ow_es.OpenWorkflow(str(pg_db["url"]), schema=str(pg_db["schema"]))

    @ow.workflow(name="one")
    async def one(ctx: ow_es.Context, n: int) -> int:
        return await ctx.step.run("twice", lambda: n * 2)

    await ow.connect()
    try:
        claims: list[int] = []
        real = ow.store.claim_ready

        async def counted(*args: Any) -> Claimed:
            claimed = await real(*args)
            claims.append(len(claimed.runs))
            return claimed

        monkeypatch.setattr(ow.store, "claim_ready", counted)
        async with running_worker(ow, poll_interval="30s"):
            for n in range(10):
                assert await (await one.start(n)).result(timeout=10) == 2 * n
        assert sum(claims) == 10
        assert claims.count(0) <= 2, claims  # the first claim at start, and a spare at most
    finally:
        await ow.close()
