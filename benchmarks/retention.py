"""Retention speed: deleting 100,000 old terminal runs on PostgreSQL.

The runs are written through the store API as ``rebuild.py`` writes its log (created, claimed,
two steps, completed: 5 events and 2 step attempts a run), into a schema of their own; then
``ow.retention(older_than="0s")`` deletes them all, ``--batch`` trees per transaction, and the
script prints runs per second. The schema is dropped at the end.

    python benchmarks/retention.py --url postgresql://postgres@127.0.0.1:5432/test [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from rebuild import build_log, events_per_run

import ow_es

STEPS = 2


async def main(url: str, runs: int, batch: int) -> None:
    schema = f"bench_retention_{uuid.uuid4().hex[:8]}"
    ow = ow_es.OpenWorkflow(url, schema=schema, namespace="bench")
    try:
        await ow.connect()
        started = time.perf_counter()
        written = await build_log(
            ow, events=runs * events_per_run(STEPS), steps=STEPS, progress=print
        )
        print(f"wrote {written} runs in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        report = await ow.retention(older_than="0s", batch=batch)
        seconds = time.perf_counter() - started
        print(
            f"retention deleted {report.runs} runs, {report.steps} step attempts and"
            f" {report.events} events in {seconds:.1f}s ({report.batches} batches of {batch}):"
            f" {report.runs / seconds:,.0f} runs/s"
        )
        assert report.runs == written, report
    finally:
        await ow.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.runs, args.batch))
