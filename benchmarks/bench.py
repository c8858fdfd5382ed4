"""ow-es benchmark: throughput, latency, per-step cost and how they hold up, beside the raw floor
of the same database and its peers, in one run.

    python benchmarks/bench.py --database-url postgresql://postgres@127.0.0.1:5432/test \
        [--only a,b,c,d,...] [--with-sqlite] [--report docs/performance.md] [--json-out FILE]

(a) throughput: 4-step no-op workflows, all started first, then drained by one worker process;
(b) enqueue -> first step latency on an idle worker process, split into its parts; (c) one run
of many sequential steps; (d) the floor: bare psycopg on the same database; pgqueuer and dbos:
the peers on the same database (skipped when not installed); (e) ``reproject()`` over a
sizeable log; (g) the cost of a wake-up as a run's history grows to 1,000 steps; (h) 1, 2, 4
and 8 worker processes on one backlog, with the claims that found nothing; (i) start -> first
step with the worker in the client's process; (f) (a)-(c) again as 1,000,000 events of history
are seeded. Everything lives in fresh schemas ``bench_<random>*`` dropped at the end (SQLite:
a fresh file); durability is never lowered.
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

import competitor_dbos
import competitor_pgqueuer
import floor
import inproc
import long_history
import many_workers
import phases
import psycopg
import rebuild
import report
import report_page
import scale
import table
from psycopg import sql
from target import Skipped, Target, client, create_schema, drop_schema, progress

import ow_es

# The order they run in: the peers right after ow-es's own (a)-(d), so that the comparisons are
# measured close together; (f) last, in a schema of its own.
PHASES = ("a", "b", "c", "d", "pgqueuer", "dbos", "e", "g", "h", "i", "f")
POSTGRES_ONLY = {
    "d": "the raw floor is measured on PostgreSQL only",
    "pgqueuer": "pgqueuer runs on PostgreSQL only",
    "dbos": "DBOS is measured on PostgreSQL only",
    "f": "the seeder (seed.sql) writes PostgreSQL",
    "h": "the thundering herd is a PostgreSQL NOTIFY matter (SQLite workers poll)",
}
SQLITE_PHASES = ("a", "b", "c", "i")  # with --with-sqlite: the item 8
FIELDS = {
    "a": "throughput",
    "b": "latency",
    "c": "sequential",
    "d": "floor",
    "e": "rebuild",
    "f": "scale",
    "g": "long",
    "h": "many",
    "i": "inproc",
    "pgqueuer": "pgqueuer",
    "dbos": "dbos",
}
# The figure a phase is judged by: with --repeat, the repetition with its median is reported.
HEADLINES: dict[str, Callable[[Any], float]] = {
    "a": lambda r: r.workflows_per_s,
    "b": lambda r: r.p50_ms,
    "c": lambda r: r.ms_per_step,
    "d": lambda r: r.jobs_per_s,
    "e": lambda r: r.events_per_s,
    "f": lambda r: r.workflows_ratio,
    "g": lambda r: r.judged.growth,
    "h": lambda r: r.counts[-1].trickle_empty_per_run(r.trickle_runs) or 0.0,
    "i": lambda r: r.p50_ms,
    "pgqueuer": lambda r: r.p50_ms,
    "dbos": lambda r: r.workflows_per_s,
}


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--database-url",
        default=os.environ.get("OW_ES_DATABASE_URL"),
        help="postgresql://... (all phases) or sqlite:///file.db; env OW_ES_DATABASE_URL",
    )
    add("--only", default=",".join(PHASES), help="phases to run, e.g. a,b,pgqueuer")
    add(
        "--with-sqlite",
        action="store_true",
        help="then run (a)-(c) and (i) on a fresh SQLite file too (the embedded default)",
    )
    add("--json-out", type=Path, default=None, help="also write the JSON here")
    add(
        "--report",
        type=Path,
        default=None,
        help="write a markdown report here (plots beside it, in a folder of its name)",
    )
    add("--runs", type=int, default=1000, help="(a) runs to drain")
    add("--latency-runs", type=int, default=200, help="(b), (i), pgqueuer: runs to time")
    add("--rate", type=float, default=20.0, help="(b), (i), pgqueuer: starts per second")
    add("--steps", type=int, default=1000, help="(c) sequential steps")
    add("--rebuild-events", type=int, default=200_000, help="(e) events to write, then rebuild")
    add("--rebuild-steps", type=int, default=10, help="(e) steps per run of that log")
    add(
        "--scale-runs",
        type=int,
        default=110_000,
        help="(f) runs to seed (every 11th parked): 110,000 make 1,000,000 events",
    )
    add("--scale-points", type=int, default=4, help="(f) seeding steps, measured after each")
    add("--long-steps", type=int, default=1000, help="(g) steps of the long run")
    add("--long-every", type=int, default=10, help="(g) it sleeps after every N steps")
    add("--long-sleep-ms", type=float, default=20.0, help="(g) for this long (it must park)")
    add("--workers", type=_counts, default=[1, 2, 4, 8], help="(h) worker processes, e.g. 1,8")
    add("--workers-runs", type=int, default=2000, help="(h) the backlog")
    add("--workers-concurrency", type=int, default=25, help="(h) concurrency of each worker")
    add("--workers-trickle", type=int, default=100, help="(h) runs started one at a time")
    add("--pgqueuer-jobs", type=int, default=1000, help="pgqueuer: the backlog it drains")
    add("--dbos-workflows", type=int, default=500, help="dbos: 4-step workflows to run")
    add("--repeat", type=int, default=1, help="N rounds of the phases; the median counts")
    add("--profile", type=Path, default=None, help="run workers under cProfile, stats to DIR")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("--database-url is required (or set OW_ES_DATABASE_URL)")
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.rebuild_events < 1 or args.rebuild_steps < 0:
        parser.error("--rebuild-events must be positive and --rebuild-steps not negative")
    if args.scale_points < 1 or args.scale_runs < 1:
        parser.error("--scale-points and --scale-runs must be positive")
    if unknown := set(args.only) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


def timeouts(args: argparse.Namespace) -> dict[str, float]:
    """Generous bounds per repetition, so the program always ends."""
    paced = args.latency_runs / args.rate
    abc = 240 + args.runs * 0.05 + paced * 2 + args.steps * 0.05
    return {
        "a": 120 + args.runs * 0.05,
        "b": 60 + paced * 2,
        "c": 60 + args.steps * 0.05,
        "d": 120 + paced * 2,
        "e": 120 + args.rebuild_events * 0.003,
        "f": 120 + (args.scale_points + 1) * abc + args.scale_runs * 0.003,
        "g": 2 * (120 + args.long_steps * (0.2 + args.long_sleep_ms / 1000 / args.long_every)),
        "h": sum(
            180 + n * 20 + args.workers_runs * 0.05 + args.workers_trickle / args.rate * 2
            for n in args.workers
        ),
        "i": 60 + paced * 2,
        "pgqueuer": 180 + paced * 2 + args.pgqueuer_jobs * 0.05,
        "dbos": 180 + args.dbos_workflows * 0.1,
    }


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


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


async def sqlite_settings(target: Target) -> dict[str, Any]:
    """Read after ow-es created the file (it sets WAL, persistent, and synchronous=FULL on
    each of its connections)."""
    async with client(target, "bench"):
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


def describe(target: Target, settings: dict[str, Any]) -> dict[str, Any]:
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

Measure = Callable[[str], Awaitable[Any]]


async def run_once(
    result: report.Report, phase: str, measure: Measure, attempt: int, timeout: float
) -> Any | None:
    """Run a phase once (in its own namespace), bounded by ``timeout``; its value, or None
    with the reason in ``result.errors``."""
    progress(f"phase ({phase}) round {attempt} ...")
    began = time.perf_counter()
    bound = asyncio.timeout(timeout)
    value = None
    try:
        async with bound:
            value = await measure(f"bench-{phase}{attempt}")
    except Skipped as exc:
        result.errors[phase] = f"skipped: {exc}"
    except TimeoutError as exc:
        result.errors[phase] = (
            f"timed out after {timeout:.0f}s" if bound.expired() else f"TimeoutError: {exc!r}"
        )
    except Exception as exc:
        result.errors[phase] = f"{type(exc).__name__}: {exc}"
    status = result.errors.get(phase, "ok")
    progress(f"phase ({phase}) round {attempt} {status} in {time.perf_counter() - began:.1f}s")
    return value


def keep_median(result: report.Report, phase: str, values: list[Any]) -> None:
    """The repetition with the median headline figure is the phase's result; all are listed."""
    if values:
        headline = HEADLINES[phase]
        values.sort(key=headline)
        setattr(result, FIELDS[phase], values[len(values) // 2])
        result.repeats[phase] = [headline(value) for value in values]


def measures(args: argparse.Namespace, target: Target) -> dict[str, Measure]:
    paced = {"runs": args.latency_runs, "rate": args.rate}
    sizes = {
        "runs": args.runs,
        "latency_runs": args.latency_runs,
        "rate": args.rate,
        "steps": args.steps,
    }
    return {
        "a": lambda ns: phases.throughput(target, ns, runs=args.runs),
        "b": lambda ns: phases.latency(target, ns, **paced),
        "c": lambda ns: phases.sequential(target, ns, steps=args.steps),
        "d": lambda _: floor.measure(
            target.url, target.schema, paced_runs=args.latency_runs, rate=args.rate
        ),
        "pgqueuer": lambda ns: competitor_pgqueuer.measure(
            target, ns, **paced, jobs=args.pgqueuer_jobs
        ),
        "dbos": lambda ns: competitor_dbos.measure(target, ns, workflows=args.dbos_workflows),
        "e": lambda ns: rebuild.measure(
            target, ns, events=args.rebuild_events, steps=args.rebuild_steps, progress=progress
        ),
        "g": lambda ns: long_history.measure(
            target, ns, steps=args.long_steps, every=args.long_every, sleep_ms=args.long_sleep_ms
        ),
        "h": lambda ns: many_workers.measure(
            target,
            ns,
            counts=args.workers,
            runs=args.workers_runs,
            concurrency=args.workers_concurrency,
            trickle_runs=args.workers_trickle,
            rate=args.rate,
        ),
        "i": lambda ns: inproc.measure(target, ns, **paced),
        "f": lambda ns: scale.measure(
            target,
            ns,
            seed_runs=args.scale_runs,
            points=args.scale_points,
            sizes=sizes,
            progress=progress,
        ),
    }


async def run_all(args: argparse.Namespace, target: Target, only: list[str]) -> report.Report:
    if target.backend == "postgres":
        settings = await postgres_settings(target.url)
        await create_schema(target.url, target.schema)
    else:
        settings = await sqlite_settings(target)
    result = report.Report(server=describe(target, settings))
    measure = measures(args, target)
    bounds = timeouts(args)
    chosen = [phase for phase in PHASES if phase in only]
    for phase in chosen:
        if phase in POSTGRES_ONLY and target.backend != "postgres":
            result.errors[phase] = f"skipped: {POSTGRES_ONLY[phase]}"
    # With --repeat, the repetitions are rounds of every phase (not each phase N times in a
    # row): a figure, its floor and its peers are measured a few seconds apart in each round,
    # so the machine's drift over minutes weighs on them alike.
    values: dict[str, list[Any]] = {phase: [] for phase in chosen}
    for attempt in range(1, args.repeat + 1):
        for phase in chosen:
            if phase in result.errors:
                continue
            value = await run_once(result, phase, measure[phase], attempt, bounds[phase])
            if value is not None:
                values[phase].append(value)
    for phase in chosen:
        keep_median(result, phase, values[phase])
    result.server["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    return result


async def cleanup(target: Target) -> None:
    """Drop the benchmark schema (or remove the SQLite file): nothing is left behind."""
    try:
        if target.backend == "postgres":
            await drop_schema(target.url, target.schema)
        else:
            remove_sqlite(sqlite_path(target.url))
    except (psycopg.Error, OSError) as exc:
        print(f"warning: could not clean up {target.schema}: {exc}", file=sys.stderr)


async def run_on(args: argparse.Namespace, target: Target, only: list[str]) -> report.Report:
    try:
        return await run_all(args, target, only)
    finally:
        await cleanup(target)


def _print(result: report.Report) -> None:
    print(f"ow-es benchmark  {server_line(result.server)}")
    print(table.details(result))
    print()
    if result.judged():
        print(table.summary(result))
        print()


def server_line(server: dict[str, Any]) -> str:
    return "  ".join(f"{key}={value}" for key, value in server.items())


async def main(argv: list[str]) -> int:
    args = parse(argv)
    url: str = args.database_url
    log_dir = Path(tempfile.mkdtemp(prefix="ow-es-bench-"))
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    target = Target(
        url=url, schema=f"bench_{secrets.token_hex(4)}", log_dir=log_dir, profile_dir=args.profile
    )
    if target.backend == "sqlite" and sqlite_path(url).exists():
        print(
            f"error: {sqlite_path(url)} exists; the benchmark wants a fresh file", file=sys.stderr
        )
        return 2
    results: list[report.Report] = []
    try:
        results.append(await run_on(args, target, args.only))
        if args.with_sqlite and target.backend == "postgres":
            embedded = Target(
                url=f"sqlite:///{log_dir / 'bench.db'}",
                schema="main",
                log_dir=log_dir,
                profile_dir=args.profile,
            )
            only = [phase for phase in SQLITE_PHASES if phase in args.only]
            results.append(await run_on(args, embedded, only))
    except (psycopg.Error, ow_es.OwEsError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        shutil.rmtree(log_dir, ignore_errors=True)
        return 2
    for result in results:
        _print(result)
    document = report.dumps(results[0]) if len(results) == 1 else report.dumps_all(results)
    print(document)
    if args.json_out is not None:
        args.json_out.write_text(document + "\n")
    if args.report is not None:
        written = report_page.write(args.report, results, argv)
        progress(f"report written: {', '.join(str(path) for path in written)}")
    failed = [e for r in results for e in r.errors.values() if not e.startswith("skipped")]
    if failed:
        print(f"worker logs kept in {log_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
