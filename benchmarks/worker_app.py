"""One ow-es worker in its own process, serving the benchmark workflows.

Run by bench.py; prints ``READY <cpu seconds>`` on stdout once the worker has made its first
claim, stops gracefully on SIGTERM/SIGINT, then prints ``EXIT <cpu seconds>`` (the process's CPU
time, all threads). Plain Python, no ``ow-es`` command needed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import sys
import time

import bench_workflows

import ow_es


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--cprofile", default=None, help="write cProfile stats to this file")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    ow = ow_es.OpenWorkflow(args.url, namespace=args.namespace, schema=args.schema, migrate=False)
    for workflow in bench_workflows.ALL:
        ow.register(workflow)
    async with ow:
        worker = ow.worker(concurrency=args.concurrency)
        running = asyncio.create_task(worker.run(handle_signals=True))
        ready = asyncio.ensure_future(worker.ready.wait())
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            print(f"READY {time.process_time():.6f}", flush=True)
        else:
            ready.cancel()
        await running
    print(f"EXIT {time.process_time():.6f}", flush=True)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = _parse(argv)
    if args.cprofile is None:
        asyncio.run(serve(args))
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(serve(args))
    finally:
        profiler.disable()
        profiler.dump_stats(args.cprofile)


if __name__ == "__main__":
    main(sys.argv[1:])
