"""(d) The raw floor: what bare psycopg does on the same database, in the same run.

A minimal durable job queue in the benchmark schema: concurrent single-row INSERTs, then
``concurrency`` asyncio tasks sharing a pool of ``pool_size`` connections (the shape of (a):
worker concurrency 100 over ow-es's default pool of 10), each claiming one job per transaction
with ``SELECT ... FOR UPDATE SKIP LOCKED`` + ``UPDATE`` and completing it with another
``UPDATE``. Plus sequential latencies, a LISTEN/NOTIFY round trip, and the bare version of
(b): at the same pace, one statement inserts a job and NOTIFYs; a LISTENing task claims it
(SKIP LOCKED + UPDATE, committed) and notes when the job could start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from records import Floor, percentile

Conn = psycopg.AsyncConnection[Any]

CREATE = """
DROP TABLE IF EXISTS {schema}.floor_jobs;
CREATE TABLE {schema}.floor_jobs (
    id bigserial PRIMARY KEY,
    status text NOT NULL DEFAULT 'pending',
    payload jsonb NOT NULL,
    worker text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX floor_jobs_pending ON {schema}.floor_jobs (id) WHERE status = 'pending'
"""
INSERT = "INSERT INTO floor_jobs (payload) VALUES (%s::jsonb) RETURNING id"
CLAIM = (
    "SELECT id FROM floor_jobs WHERE status = 'pending' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
)
MARK_RUNNING = (
    "UPDATE floor_jobs SET status = 'running', worker = %s, updated_at = now() WHERE id = %s"
)
MARK_DONE = "UPDATE floor_jobs SET status = 'done', updated_at = now() WHERE id = %s"
INSERT_DONE = "INSERT INTO floor_jobs (payload, status) VALUES (%s::jsonb, 'done')"
ENQUEUE = (
    "WITH job AS (INSERT INTO floor_jobs (payload) VALUES (%s::jsonb) RETURNING id)"
    " SELECT pg_notify(%s, id::text) FROM job"
)
PAYLOAD = '{"job": "noop"}'


async def measure(
    url: str,
    schema: str,
    *,
    jobs: int = 1000,
    concurrency: int = 100,
    pool_size: int = 10,
    samples: int = 200,
    paced_runs: int = 200,
    rate: float = 20.0,
) -> Floor:
    async with await _connect(url, schema) as conn:
        await conn.execute(sql.SQL(CREATE).format(schema=sql.Identifier(schema)))
    pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
        url,
        min_size=pool_size,
        max_size=pool_size,
        kwargs={"autocommit": True, "options": f"-c search_path={schema}"},
        open=False,
    )
    await pool.open(wait=True, timeout=30)
    try:
        inserts_per_s = await _concurrent_inserts(pool, jobs, concurrency)
        jobs_per_s = await _concurrent_drain(pool, jobs, concurrency)
    finally:
        await pool.close()
    job_ms = await _sequential(url, schema, samples, _one_job)
    insert_ms = await _sequential(url, schema, samples, _one_insert)
    notify_ms = await _notify_round_trips(url, schema, samples)
    queue_ms = await _paced_queue(url, schema, paced_runs, rate)
    return Floor(
        jobs=jobs,
        concurrency=concurrency,
        pool_size=pool_size,
        inserts_per_s=inserts_per_s,
        jobs_per_s=jobs_per_s,
        sequential_job_p50_ms=percentile(job_ms, 50),
        sequential_job_p99_ms=percentile(job_ms, 99),
        insert_commit_p50_ms=percentile(insert_ms, 50),
        insert_commit_p99_ms=percentile(insert_ms, 99),
        notify_p50_ms=percentile(notify_ms, 50),
        notify_p99_ms=percentile(notify_ms, 99),
        paced_rate_per_s=rate,
        paced_queue_p50_ms=percentile(queue_ms, 50),
        paced_queue_p99_ms=percentile(queue_ms, 99),
    )


async def _connect(url: str, schema: str) -> Conn:
    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, connect_timeout=10, options=f"-c search_path={schema}"
    )


async def insert_commit_p50(url: str, schema: str, samples: int = 200) -> float:
    """The bare insert+commit p50 alone, in a fresh floor table of ``schema``: (f) measures it
    at each of its points, beside (c)."""
    async with await _connect(url, schema) as conn:
        await conn.execute(sql.SQL(CREATE).format(schema=sql.Identifier(schema)))
    return percentile(await _sequential(url, schema, samples, _one_insert), 50)


# -- concurrent: the shape of (a) --------------------------------------------------------------


async def _concurrent_inserts(
    pool: AsyncConnectionPool[Conn], jobs: int, concurrency: int
) -> float:
    remaining = iter(range(jobs))

    async def inserter() -> None:
        for _ in remaining:
            async with pool.connection() as conn:
                await conn.execute(INSERT, [PAYLOAD], prepare=True)

    began = time.perf_counter()
    await asyncio.gather(*(inserter() for _ in range(concurrency)))
    return jobs / (time.perf_counter() - began)


async def _claim(conn: Conn, worker: str) -> int | None:
    async with conn.transaction():
        cur = await conn.execute(CLAIM, prepare=True)
        row = await cur.fetchone()
        if row is None:
            return None
        await conn.execute(MARK_RUNNING, [worker, row[0]], prepare=True)
        return int(row[0])


async def _concurrent_drain(pool: AsyncConnectionPool[Conn], jobs: int, concurrency: int) -> float:
    async def worker(name: str) -> int:
        done = 0
        while True:
            async with pool.connection() as conn:
                job = await _claim(conn, name)
            if job is None:
                return done  # every pending job is taken (the locked ones by other tasks)
            async with pool.connection() as conn:
                await conn.execute(MARK_DONE, [job], prepare=True)
            done += 1

    began = time.perf_counter()
    counts = await asyncio.gather(*(worker(f"w{i}") for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    if sum(counts) != jobs:
        raise RuntimeError(f"floor drain completed {sum(counts)} jobs, expected {jobs}")
    return jobs / elapsed


# -- sequential latencies ------------------------------------------------------------------------


async def _one_insert(conn: Conn) -> None:
    await conn.execute(INSERT_DONE, [PAYLOAD], prepare=True)  # 'done': no claim may take it


async def _one_job(conn: Conn) -> None:
    await conn.execute(INSERT, [PAYLOAD], prepare=True)
    job = await _claim(conn, "sequential")
    assert job is not None
    await conn.execute(MARK_DONE, [job], prepare=True)


async def _sequential(
    url: str, schema: str, samples: int, operation: Callable[[Conn], Awaitable[None]]
) -> list[float]:
    """Milliseconds per ``operation``, one at a time on one connection, after a warm-up."""
    async with await _connect(url, schema) as conn:
        for _ in range(10):
            await operation(conn)
        times = []
        for _ in range(samples):
            began = time.perf_counter()
            await operation(conn)
            times.append((time.perf_counter() - began) * 1000)
        return times


# -- LISTEN/NOTIFY -------------------------------------------------------------------------------


async def _notify_round_trips(url: str, schema: str, samples: int) -> list[float]:
    """NOTIFY (autocommit) on one connection -> received on another that LISTENs."""
    channel = f"{schema}_floor_notify"
    received: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    async with await _connect(url, schema) as listener, await _connect(url, schema) as sender:
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

        async def listen() -> None:
            async for note in listener.notifies():
                received.put_nowait((note.payload, time.perf_counter()))

        task = asyncio.create_task(listen())
        try:
            times = []
            for index in range(samples + 10):
                began = time.perf_counter()
                await sender.execute("SELECT pg_notify(%s, %s)", [channel, str(index)])
                payload, at = await asyncio.wait_for(received.get(), timeout=5)
                assert payload == str(index)
                if index >= 10:  # warm-up
                    times.append((at - began) * 1000)
            return times
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# -- (b) without an engine: enqueue -> job started, at the same pace -----------------------------


async def _paced_queue(url: str, schema: str, runs: int, rate: float) -> list[float]:
    """Milliseconds from just before the enqueue statement to the committed claim."""
    channel = f"{schema}_floor_queue"
    started: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    async with (
        await _connect(url, schema) as producer,
        await _connect(url, schema) as listener,
        await _connect(url, schema) as worker,
    ):
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

        async def serve() -> None:
            async for _ in listener.notifies():
                job = await _claim(worker, "paced")
                if job is not None:
                    started.put_nowait((job, time.perf_counter()))

        task = asyncio.create_task(serve())
        try:
            times = []
            began = time.perf_counter()
            for index in range(runs):
                delay = began + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                enqueued = time.perf_counter()
                await producer.execute(ENQUEUE, [PAYLOAD, channel], prepare=True)
                _, at = await asyncio.wait_for(started.get(), timeout=5)
                times.append((at - enqueued) * 1000)
            return times
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
