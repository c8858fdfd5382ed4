"""ow-es benchmark: throughput, latency, per-step cost, and the raw floor of the same database.

    python benchmarks/bench.py --database-url postgresql://postgres@127.0.0.1:5432/test \
        [--only a,b,c,d,e] [--json-out results.json]

(a) throughput: runs of a 4-step no-op workflow, all started first, then drained by one worker
    process (concurrency 100); (b) enqueue -> first step latency at a steady rate on an idle
    worker process; (c) one run of many sequential no-op steps; (d) the floor: bare psycopg on
    the same database (job queue with SKIP LOCKED, insert+commit, LISTEN/NOTIFY); (e) how fast
    ``reproject()`` folds a sizeable event log into fresh projections. Everything
    lives in a fresh schema ``bench_<random>`` dropped at the end; durability is never lowered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import floor
import phases
import psycopg
import rebuild
import report
from psycopg import sql

import ow_es

PHASES = ("a", "b", "c", "d", "e")


def timeouts(args: argparse.Namespace) -> dict[str, float]:
    """Generous bounds per repetition, so the program always ends."""
    paced = args.latency_runs / args.rate
    return {
        "a": 120 + args.runs * 0.05,
        "b": 60 + paced * 2,
        "c": 60 + args.steps * 0.05,
        "d": 120 + paced * 2,
        "e": 120 + args.rebuild_events * 0.003,
    }


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("OW_ES_DATABASE_URL"),
        help="postgresql://... (all phases) or sqlite:///file.db ((a)-(c) and (e)); "
        "env OW_ES_DATABASE_URL",
    )
    parser.add_argument("--only", default=",".join(PHASES), help="phases to run, e.g. a,d")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--runs", type=int, default=1000, help="(a) runs to drain")
    parser.add_argument("--latency-runs", type=int, default=200, help="(b) runs to time")
    parser.add_argument("--rate", type=float, default=20.0, help="(b) runs started per second")
    parser.add_argument("--steps", type=int, default=1000, help="(c) sequential steps")
    parser.add_argument(
        "--rebuild-events", type=int, default=200_000, help="(e) events to write, then rebuild"
    )
    parser.add_argument(
        "--rebuild-steps", type=int, default=10, help="(e) steps per run of that log"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each phase N times, report the median"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="run workers under cProfile, stats to DIR"
    )
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("--database-url is required (or set OW_ES_DATABASE_URL)")
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.rebuild_events < 1 or args.rebuild_steps < 0:
        parser.error("--rebuild-events must be positive and --rebuild-steps not negative")
    if unknown := set(args.only) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the database: settings, schema ---------------------------------------------------------------


async def postgres_settings(url: str) -> dict[str, Any]:
    names = ("server_version", "synchronous_commit", "fsync", "wal_sync_method", "full_page_writes")
    async with await psycopg.AsyncConnection.connect(url, connect_timeout=10) as conn:
        values = {}
        for name in names:
            cur = await conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
            row = await cur.fetchone()
            values[name] = row[0] if row else None
        return values


async def create_schema(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


async def drop_schema(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


async def sqlite_settings(target: phases.Target) -> dict[str, Any]:
    """Read after ow-es created the file (it sets WAL, persistent, and synchronous=FULL on
    each of its connections)."""
    async with phases.client(target, "bench"):
        pass
    conn = sqlite3.connect(sqlite_path(target.url))
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    return {"sqlite_version": sqlite3.sqlite_version, "journal_mode": mode, "synchronous": "FULL"}


def remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def redact(url: str) -> str:
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def describe(target: phases.Target, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "backend": target.backend,
        "url": redact(target.url),
        "schema": target.schema if target.backend == "postgres" else None,
        **settings,
        "cpus": os.cpu_count(),
        "loadavg_1m_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "ow_es": ow_es.__version__,
        "psycopg": psycopg.__version__,
    }


# -- phases ---------------------------------------------------------------------------------------


_FIELDS = {"a": "throughput", "b": "latency", "c": "sequential", "d": "floor", "e": "rebuild"}
# The figure a phase is judged by: with --repeat, the repetition with its median is reported.
HEADLINES = {
    "a": "workflows_per_s",
    "b": "p50_ms",
    "c": "ms_per_step",
    "d": "jobs_per_s",
    "e": "events_per_s",
}

Measure = Callable[[str], Awaitable[Any]]


async def run_phase(
    result: report.Report, phase: str, measure: Measure, repeat: int, timeout: float
) -> None:
    """Run a phase ``repeat`` times (each in its own namespace), each bounded by ``timeout``."""
    values = []
    for attempt in range(1, repeat + 1):
        progress(f"phase ({phase}) {attempt}/{repeat} ...")
        began = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                values.append(await measure(f"bench-{phase}{attempt}"))
        except TimeoutError:
            result.errors[phase] = f"timed out after {timeout:.0f}s"
        except Exception as exc:
            result.errors[phase] = f"{type(exc).__name__}: {exc}"
        status = result.errors.get(phase, "ok")
        progress(
            f"phase ({phase}) {attempt}/{repeat} {status} in {time.perf_counter() - began:.1f}s"
        )
        if phase in result.errors:
            break
    if values:
        values.sort(key=lambda value: getattr(value, HEADLINES[phase]))
        setattr(result, _FIELDS[phase], values[len(values) // 2])
        result.repeats[phase] = [getattr(value, HEADLINES[phase]) for value in values]


async def run_all(args: argparse.Namespace, target: phases.Target) -> report.Report:
    if target.backend == "postgres":
        settings = await postgres_settings(target.url)
        await create_schema(target.url, target.schema)
    else:
        settings = await sqlite_settings(target)
    result = report.Report(server=describe(target, settings))
    progress("settings: " + report.server_line(result.server))
    measures: dict[str, Measure] = {
        "a": lambda ns: phases.throughput(target, ns, runs=args.runs),
        "b": lambda ns: phases.latency(target, ns, runs=args.latency_runs, rate=args.rate),
        "c": lambda ns: phases.sequential(target, ns, steps=args.steps),
        "d": lambda _: floor.measure(
            target.url, target.schema, paced_runs=args.latency_runs, rate=args.rate
        ),
        "e": lambda ns: rebuild.measure(
            target,
            ns,
            events=args.rebuild_events,
            steps=args.rebuild_steps,
            progress=progress,
        ),
    }
    for phase in PHASES:
        if phase not in args.only:
            continue
        if phase == "d" and target.backend != "postgres":
            result.errors[phase] = "skipped: the raw floor is measured on PostgreSQL only"
            continue
        await run_phase(result, phase, measures[phase], args.repeat, timeouts(args)[phase])
    result.server["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    return result


async def cleanup(target: phases.Target) -> None:
    """Drop the benchmark schema (or remove the SQLite file): nothing is left behind."""
    try:
        if target.backend == "postgres":
            await drop_schema(target.url, target.schema)
        else:
            remove_sqlite(sqlite_path(target.url))
    except (psycopg.Error, OSError) as exc:
        print(f"warning: could not clean up {target.schema}: {exc}", file=sys.stderr)


async def main(argv: list[str]) -> int:
    args = parse(argv)
    url: str = args.database_url
    schema = f"bench_{secrets.token_hex(4)}"
    log_dir = Path(tempfile.mkdtemp(prefix="ow-es-bench-"))
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    target = phases.Target(url=url, schema=schema, log_dir=log_dir, profile_dir=args.profile)
    if target.backend == "sqlite" and sqlite_path(url).exists():
        print(
            f"error: {sqlite_path(url)} exists; the benchmark wants a fresh file", file=sys.stderr
        )
        return 2
    try:
        result = await run_all(args, target)
    except (psycopg.Error, ow_es.OwEsError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        shutil.rmtree(log_dir, ignore_errors=True)
        return 2
    finally:
        await cleanup(target)
    print(f"ow-es benchmark  {report.server_line(result.server)}")
    print(report.table(result))
    print(report.dumps(result))
    if args.json_out is not None:
        args.json_out.write_text(report.dumps(result) + "\n")
    failed = {p: e for p, e in result.errors.items() if not e.startswith("skipped")}
    if failed:
        print(f"worker logs kept in {log_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
