"""pgqueuer on the same database, measured as ow-es is (optional: skipped when not installed).

Its tables go in the benchmark schema (a prefix per repetition), its consumer runs in a process
of its own, as ow-es's worker does (``python competitor_pgqueuer.py consume ...``), with the
asyncpg driver when installed (pgqueuer's usual one) and psycopg otherwise. Two figures:

* latency: one job enqueued every 1/rate s, as (b); from just before ``enqueue()`` to the
  job's function starting (``time.time()`` in the consumer, which writes them to a file);
* throughput: a backlog of no-op jobs enqueued first, then drained (``mode=drain``); jobs /
  (first job picked -> last job successful), both from pgqueuer's own log table, i.e. database
  times, as ow-es's (a) is timed by its runs' rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from importlib import metadata, util
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from records import PgQueuer, percentile
from target import Skipped, Target

ENTRYPOINT = "bench"


def _driver_name() -> str:
    return "asyncpg" if util.find_spec("asyncpg") is not None else "psycopg"


def _settings(schema: str, prefix: str) -> Any:
    from pgqueuer.domain.settings import DBSettings

    return DBSettings(prefix=prefix, db_schema=schema, channel=f"{schema}_{prefix}pgq")


@contextlib.asynccontextmanager
async def _queries(url: str, schema: str, prefix: str) -> Any:
    """pgqueuer's Queries over one connection of the chosen driver, for these settings."""
    from pgqueuer import Queries
    from pgqueuer.adapters.persistence import qb

    settings = _settings(schema, prefix)
    builders = {
        "qbe": qb.QueryBuilderEnvironment(settings=settings),
        "qbq": qb.QueryQueueBuilder(settings=settings),
        "qbs": qb.QuerySchedulerBuilder(settings=settings),
    }
    if _driver_name() == "asyncpg":
        import asyncpg
        from pgqueuer import AsyncpgDriver

        conn = await asyncpg.connect(url)
        try:
            yield Queries(AsyncpgDriver(conn), **builders), settings
        finally:
            await conn.close()
    else:
        from pgqueuer import PsycopgDriver

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as pconn:
            yield Queries(PsycopgDriver(pconn), **builders), settings


# -- the consumer process ------------------------------------------------------------------------


async def consume(args: argparse.Namespace) -> None:
    """Run a QueueManager; note when each job's function starts; stop after ``expect`` jobs
    (latency) or when the queue is empty (drain); write the start times to ``out``."""
    from pgqueuer import QueueManager
    from pgqueuer.types import Channel, QueueExecutionMode

    started: dict[str, float] = {}
    async with _queries(args.url, args.schema, args.prefix) as (queries, settings):
        manager = QueueManager(queries, channel=Channel(settings.channel))

        @manager.entrypoint(ENTRYPOINT)
        async def job(job: Any) -> None:
            started[(job.payload or b"").decode()] = time.time()
            if args.expect and len(started) >= args.expect:
                manager.shutdown.set()

        async def ready() -> None:
            """READY once a NOTIFY probe comes back: the consumer listens (a probe sent
            before run() set up its listener is lost: try again)."""
            from datetime import timedelta

            from pgqueuer.errors import FailingListenerError

            while True:
                try:
                    await manager.listener_healthy(timeout=timedelta(seconds=0.5))
                except FailingListenerError:
                    continue
                print("READY", flush=True)
                return

        announce = asyncio.create_task(ready())
        mode = QueueExecutionMode.drain if args.drain else QueueExecutionMode.continuous
        await manager.run(mode=mode, batch_size=args.batch_size)
        announce.cancel()
    Path(args.out).write_text(json.dumps(started))


# -- the benchmark side --------------------------------------------------------------------------


async def _spawn(target: Target, prefix: str, out: Path, extra: list[str]) -> Any:
    command = [
        sys.executable, __file__, "consume", "--url", target.url, "--schema", target.schema,
        "--prefix", prefix, "--out", str(out), *extra,
    ]  # fmt: skip
    return await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _finish(process: Any, timeout: float) -> None:
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError("the pgqueuer consumer did not finish in time") from None
    if process.returncode:
        raise RuntimeError(f"the pgqueuer consumer failed: {stderr.decode()[-800:]}")


async def _latency(
    target: Target, prefix: str, runs: int, rate: float, folder: Path
) -> list[float]:
    out = folder / "latency.json"
    process = await _spawn(target, prefix, out, ["--expect", str(runs)])
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
    if line.strip() != b"READY":
        await _finish(process, 10)
        raise RuntimeError("the pgqueuer consumer did not become ready")
    await asyncio.sleep(0.5)
    enqueued: dict[str, float] = {}
    async with _queries(target.url, target.schema, prefix) as (queries, _):
        began = time.perf_counter()
        for index in range(runs):
            delay = began + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            enqueued[str(index)] = time.time()
            await queries.enqueue(ENTRYPOINT, str(index).encode())
    await _finish(process, 60)
    started = json.loads(out.read_text())
    return [(started[key] - at) * 1000 for key, at in enqueued.items() if key in started]


async def _log_row(target: Target, prefix: str, query: str, params: list[Any]) -> Any:
    log = sql.Identifier(target.schema, f"{prefix}pgqueuer_log")
    async with await psycopg.AsyncConnection.connect(target.url, autocommit=True) as conn:
        cur = await conn.execute(sql.SQL(query).format(log=log), params)
        return await cur.fetchone()


async def _drain(target: Target, prefix: str, jobs: int, batch_size: int, folder: Path) -> float:
    (before,) = await _log_row(target, prefix, "SELECT coalesce(max(job_id), 0) FROM {log}", [])
    async with _queries(target.url, target.schema, prefix) as (queries, _):
        await queries.enqueue(
            [ENTRYPOINT] * jobs, [str(i).encode() for i in range(jobs)], [0] * jobs
        )
    process = await _spawn(
        target, prefix, folder / "drain.json", ["--drain", "--batch-size", str(batch_size)]
    )
    await _finish(process, 120 + jobs * 0.05)
    first, last, done = await _log_row(
        target,
        prefix,
        "SELECT min(created) FILTER (WHERE status = 'picked'),"
        " max(created) FILTER (WHERE status = 'successful'),"
        " count(*) FILTER (WHERE status = 'successful') FROM {log} WHERE job_id > %s",
        [before],
    )
    if done != jobs:
        raise RuntimeError(f"pgqueuer completed {done} of {jobs} jobs")
    return float((last - first).total_seconds())


async def measure(
    target: Target,
    namespace: str,
    *,
    runs: int = 200,
    rate: float = 20.0,
    jobs: int = 1000,
    batch_size: int = 10,
) -> PgQueuer:
    if util.find_spec("pgqueuer") is None:
        raise Skipped("pgqueuer is not installed (pip install -e '.[bench]')")
    prefix = "".join(ch if ch.isalnum() else "_" for ch in namespace).lower() + "_"
    async with _queries(target.url, target.schema, prefix) as (queries, _):
        await queries.install(create_schema=False)
    with tempfile.TemporaryDirectory(prefix="ow-es-bench-pgqueuer-") as folder:
        latencies = await _latency(target, prefix, runs, rate, Path(folder))
        seconds = await _drain(target, prefix, jobs, batch_size, Path(folder))
    return PgQueuer(
        version=metadata.version("pgqueuer"),
        driver=_driver_name(),
        latency_runs=runs,
        rate_per_s=rate,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies),
        jobs=jobs,
        batch_size=batch_size,
        seconds=seconds,
        jobs_per_s=jobs / seconds,
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="the pgqueuer consumer of the benchmark")
    parser.add_argument("command", choices=["consume"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--expect", type=int, default=0, help="stop after this many jobs")
    parser.add_argument("--drain", action="store_true", help="stop when the queue is empty")
    parser.add_argument("--batch-size", type=int, default=10)
    asyncio.run(consume(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
