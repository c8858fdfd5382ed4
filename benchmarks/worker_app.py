"""One ow-es worker in its own process, serving the benchmark workflows.

Run by bench.py; prints ``READY <cpu seconds>`` on stdout once the worker has made its first
claim, stops gracefully on SIGTERM/SIGINT, then prints ``EXIT <cpu seconds>`` (the process's CPU
time, all threads). Plain Python, no ``ow-es`` command needed.

With ``--stats FILE`` it counts its claims from the inside: the store's claim method is wrapped,
so every claim the worker loop makes is seen, with how many runs it returned and when it was
called and returned (``time.time()``, per claimed run); the counts are written to FILE as JSON
at exit (see ``ClaimCounter``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import bench_workflows

import ow_es
from ow_es.gc_tuning import tune_for_worker

TIMES_KEPT = 200_000  # per-run claim times kept at most (memory stays bounded)


def supports_holding() -> bool:
    """Whether this ow_es's worker takes ``hold_parked_runs`` (held sleeping runs)."""
    from ow_es.runtime.worker import Worker

    return "hold_parked_runs" in inspect.signature(Worker.__init__).parameters


def supports_replay_cache() -> bool:
    """Whether this ow_es's worker takes ``replay_cache_bytes`` (a worker-local replay cache)."""
    from ow_es.runtime.worker import Worker, WorkerOptions

    return "replay_cache_bytes" in WorkerOptions.__annotations__ or (
        "replay_cache_bytes" in inspect.signature(Worker.__init__).parameters
    )


class ClaimCounter:
    """Counts the claims of one store: calls, claims that found nothing, runs claimed, and
    for each claimed run when its claim was called and when it returned.

    It wraps the method the worker loop calls: ``claim_ready`` (which returns the runs with
    when to try again) where the store has it, else ``claim`` (which returns the runs)."""

    def __init__(self, store: Any) -> None:
        self.calls = 0
        self.empty = 0
        self.runs = 0
        self.times: dict[str, tuple[float, float]] = {}
        name = "claim_ready" if hasattr(store, "claim_ready") else "claim"
        self._claim = getattr(store, name)
        setattr(store, name, self.claim)  # an instance attribute: the worker calls this one

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        called = time.time()
        result = await self._claim(*args, **kwargs)
        returned = time.time()
        runs = getattr(result, "runs", result)
        self.calls += 1
        self.runs += len(runs)
        if not runs:
            self.empty += 1
        if len(self.times) < TIMES_KEPT:
            for run in runs:
                self.times[run.id] = (called, returned)
        return result

    def dump(self, path: Path) -> None:
        stats = {"calls": self.calls, "empty": self.empty, "runs": self.runs, "times": self.times}
        path.write_text(json.dumps(stats))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--cprofile", default=None, help="write cProfile stats to this file")
    parser.add_argument("--stats", type=Path, default=None, help="write claim counts here")
    parser.add_argument(
        "--replay-cache-bytes", type=int, default=None, help="the worker's replay cache size"
    )
    parser.add_argument(
        "--hold-parked-runs", type=int, default=None, help="runs held in a sleep, at most"
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    ow = ow_es.OpenWorkflow(args.url, namespace=args.namespace, schema=args.schema, migrate=False)
    for workflow in bench_workflows.ALL:
        ow.register(workflow)
    options: dict[str, Any] = {"concurrency": args.concurrency}
    if args.replay_cache_bytes is not None:
        options["replay_cache_bytes"] = args.replay_cache_bytes
    if args.hold_parked_runs is not None:
        options["hold_parked_runs"] = args.hold_parked_runs
    async with ow:
        counter = ClaimCounter(ow.store) if args.stats is not None else None
        worker = ow.worker(**options)
        running = asyncio.create_task(worker.run(handle_signals=True))
        ready = asyncio.ensure_future(worker.ready.wait())
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            print(f"READY {time.process_time():.6f}", flush=True)
        else:
            ready.cancel()
        try:
            await running
        finally:
            if counter is not None:
                counter.dump(args.stats)
    print(f"EXIT {time.process_time():.6f}", flush=True)


def main(argv: list[str]) -> None:
    # Set up as `ow-es worker` sets up its process (the collector tuned for a worker).
    tune_for_worker()
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
