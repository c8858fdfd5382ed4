"""Worker processes (``worker_app.py``): spawned, waited for, stopped, and their counts read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from target import Target

WORKER_APP = Path(__file__).with_name("worker_app.py")


class WorkerProcess:
    """A running worker_app.py; its stdout tells when it is ready and its CPU time, its stats
    file (read after it stopped) how many claims it made."""

    def __init__(
        self, process: asyncio.subprocess.Process, spawned_at: float, log: Path, stats: Path
    ) -> None:
        self.process = process
        self.spawned_at = spawned_at  # time.time() just before the spawn
        self.log = log
        self.stats_file = stats
        self.stats: dict[str, Any] | None = None  # worker_app.ClaimCounter's, after stop()
        self.ready_cpu: float | None = None  # CPU seconds at READY (imports, connect, claim)
        self.exit_cpu: float | None = None
        self._ready = asyncio.Event()
        self._reader = asyncio.create_task(self._read_stdout())

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            word, _, value = raw.decode().strip().partition(" ")
            if word == "READY":
                self.ready_cpu = float(value)
                self._ready.set()
            elif word == "EXIT":
                self.exit_cpu = float(value)

    async def wait_ready(self, timeout: float = 30) -> None:
        """Until the worker printed READY (registered, listening, first claim made)."""
        ready = asyncio.ensure_future(self._ready.wait())
        done, _ = await asyncio.wait(
            {ready, self._reader}, timeout=timeout, return_when="FIRST_COMPLETED"
        )
        ready.cancel()
        if ready not in done:
            raise RuntimeError(f"the worker did not become ready; see {self.log}")

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    @property
    def serving_cpu_seconds(self) -> float | None:
        """CPU used between READY and exit (after stop)."""
        if self.ready_cpu is None or self.exit_cpu is None:
            return None
        return self.exit_cpu - self.ready_cpu

    async def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL after 15 s; then read the stats file."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reader, timeout=5)
        with contextlib.suppress(OSError, ValueError):
            self.stats = json.loads(self.stats_file.read_text())


async def _spawn(
    target: Target, namespace: str, concurrency: int, index: int, options: Sequence[str]
) -> WorkerProcess:
    name = f"worker-{namespace}" + (f"-{index}" if index else "")
    log = target.log_dir / f"{name}.log"
    stats = target.log_dir / f"{name}.stats.json"
    command = [
        sys.executable, str(WORKER_APP), "--url", target.url, "--schema", target.schema,
        "--namespace", namespace, "--concurrency", str(concurrency), "--stats", str(stats),
        *options,
    ]  # fmt: skip
    if target.profile_dir is not None:
        command += ["--cprofile", str(target.profile_dir / f"{name}.prof")]
    with log.open("wb") as stderr:
        spawned_at = time.time()
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=_child_env(application_name(namespace)),
        )
    return WorkerProcess(process, spawned_at, log, stats)


@contextlib.asynccontextmanager
async def worker_processes(
    target: Target,
    namespace: str,
    concurrency: int,
    count: int = 1,
    options: Sequence[str] = (),
) -> AsyncIterator[list[WorkerProcess]]:
    """``count`` workers in separate Python processes, stopped with SIGTERM (then SIGKILL) at
    exit, their stats read."""
    workers: list[WorkerProcess] = []
    try:
        for index in range(count):
            workers.append(await _spawn(target, namespace, concurrency, index, options))
        yield workers
    finally:
        await asyncio.gather(*(worker.stop() for worker in workers))
        for worker in workers:
            _echo_log(worker.log)


@contextlib.asynccontextmanager
async def worker_process(
    target: Target, namespace: str, concurrency: int, options: Sequence[str] = ()
) -> AsyncIterator[WorkerProcess]:
    """One worker in a separate Python process (see ``worker_processes``)."""
    async with worker_processes(target, namespace, concurrency, 1, options) as (worker,):
        yield worker


def _echo_log(log: Path, limit: int = 10) -> None:
    """Whatever the worker logged (warnings and up) goes to stderr: it may explain a figure."""
    lines = log.read_text(errors="replace").splitlines()
    if lines:
        print(f"[bench] {log.name}: {len(lines)} line(s) on stderr:", file=sys.stderr)
        for line in lines[:limit]:
            print(f"[bench]   {line}", file=sys.stderr)


def application_name(namespace: str) -> str:
    """The worker's connections carry it, to tell their server CPU apart (see cpu.py)."""
    return f"ow-es-bench-worker-{namespace}"


def _child_env(application: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OW_ES_DATABASE_URL", None)  # the URL comes from the command line, nothing else
    env["PGAPPNAME"] = application
    return env


def claim_counts(workers: Sequence[WorkerProcess]) -> tuple[int, int, int] | None:
    """(claims, claims that found nothing, runs claimed) over these workers; None when one
    of them left no stats."""
    if any(worker.stats is None for worker in workers):
        return None
    stats = [worker.stats for worker in workers if worker.stats is not None]
    return (
        sum(int(s["calls"]) for s in stats),
        sum(int(s["empty"]) for s in stats),
        sum(int(s["runs"]) for s in stats),
    )


def claim_times(workers: Sequence[WorkerProcess]) -> dict[str, tuple[float, float]]:
    """Run id -> (its claim called, returned), ``time.time()`` in the worker processes."""
    times: dict[str, tuple[float, float]] = {}
    for worker in workers:
        for run_id, (called, returned) in (worker.stats or {}).get("times", {}).items():
            times[run_id] = (float(called), float(returned))
    return times
