"""(a), (b), (c): ow-es measured through its public API, each with one worker process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import bench_workflows
import cpu
from report import Latency, Sequential, Throughput, percentile

import ow_es

WORKER_APP = Path(__file__).with_name("worker_app.py")
TERMINAL = ("completed", "failed", "canceled")


@dataclass(frozen=True)
class Target:
    """Where the benchmark runs: the URL, its own schema, and a folder for worker logs."""

    url: str
    schema: str
    log_dir: Path
    profile_dir: Path | None = None

    @property
    def backend(self) -> str:
        return "sqlite" if self.url.startswith("sqlite:") else "postgres"


# -- the worker process --------------------------------------------------------------------------


class WorkerProcess:
    """A running worker_app.py; its stdout tells when it is ready and its CPU time."""

    def __init__(self, process: asyncio.subprocess.Process, spawned_at: float, log: Path) -> None:
        self.process = process
        self.spawned_at = spawned_at  # time.time() just before the spawn
        self.log = log
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
        """SIGTERM (graceful), then SIGKILL after 15 s."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reader, timeout=5)


@contextlib.asynccontextmanager
async def worker_process(
    target: Target, namespace: str, concurrency: int
) -> AsyncIterator[WorkerProcess]:
    """A worker in a separate Python process, stopped with SIGTERM (then SIGKILL) at exit."""
    log = target.log_dir / f"worker-{namespace}.log"
    command = [
        sys.executable, str(WORKER_APP), "--url", target.url, "--schema", target.schema,
        "--namespace", namespace, "--concurrency", str(concurrency),
    ]  # fmt: skip
    if target.profile_dir is not None:
        command += ["--cprofile", str(target.profile_dir / f"worker-{namespace}.prof")]
    with log.open("wb") as stderr:
        spawned_at = time.time()
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=_child_env(application_name(namespace)),
        )
    worker = WorkerProcess(process, spawned_at, log)
    try:
        yield worker
    finally:
        await worker.stop()
        _echo_log(log)


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


@contextlib.asynccontextmanager
async def client(target: Target, namespace: str) -> AsyncIterator[ow_es.OpenWorkflow]:
    async with ow_es.OpenWorkflow(target.url, namespace=namespace, schema=target.schema) as ow:
        yield ow


async def _finished_count(ow: ow_es.OpenWorkflow) -> int:
    counts = await ow.store.count_runs()
    return sum(n for (_, status), n in counts.items() if status in TERMINAL)


async def _all_runs(ow: ow_es.OpenWorkflow, workflow_name: str) -> list[ow_es.WorkflowRun]:
    runs: list[ow_es.WorkflowRun] = []
    cursor = None
    while True:
        page = await ow.list_runs(workflow_name=workflow_name, limit=1000, cursor=cursor)
        runs += page.runs
        cursor = page.next_cursor
        if cursor is None:
            return runs


# -- (a) throughput ------------------------------------------------------------------------------


async def throughput(
    target: Target,
    namespace: str,
    *,
    runs: int = 1000,
    concurrency: int = 100,
    chunk: int = 100,
) -> Throughput:
    workflow = bench_workflows.noop4
    async with client(target, namespace) as ow:
        began = time.perf_counter()
        for offset in range(0, runs, chunk):
            size = min(chunk, runs - offset)
            await asyncio.gather(*(ow.start(workflow) for _ in range(size)))
        start_seconds = time.perf_counter() - began
        async with worker_process(target, namespace, concurrency) as worker:
            # a cheap poll: the figures come from the runs' own timestamps, not from it
            while await _finished_count(ow) < runs:
                if worker.exited:
                    raise RuntimeError(f"the worker exited early; see {worker.log}")
                await asyncio.sleep(0.1)
            # the worker's backends were all born in this window: their whole CPU counts
            pg_cpu = await cpu.backend_cpu_seconds(target.url, application_name(namespace))
        done = await _all_runs(ow, workflow.name)
    completed = [run for run in done if run.status == "completed"]
    if len(completed) != runs:
        raise RuntimeError(f"{runs - len(completed)} of {runs} runs did not complete")
    first_claim = min(run.started_at for run in completed if run.started_at is not None)
    last_end = max(run.finished_at for run in completed if run.finished_at is not None)
    seconds = (last_end - first_claim).total_seconds()
    wall = last_end.timestamp() - worker.spawned_at  # one host, one clock (loopback)
    return Throughput(
        runs=runs,
        steps_per_run=bench_workflows.NOOP_STEPS,
        worker_concurrency=concurrency,
        completed=len(completed),
        start_seconds=start_seconds,
        starts_per_s=runs / start_seconds,
        seconds=seconds,
        workflows_per_s=runs / seconds,
        steps_per_s=runs * bench_workflows.NOOP_STEPS / seconds,
        wall_seconds_from_spawn=wall,
        worker_cpu_ms_per_run=_per(worker.serving_cpu_seconds, runs),
        postgres_cpu_ms_per_run=_per(pg_cpu, runs),
    )


# -- (b) latency ---------------------------------------------------------------------------------


@dataclass
class _Sample:
    enqueued: float  # time.time() just before start()
    returned: float  # time.time() when start() returned
    handle: ow_es.RunHandle


async def latency(
    target: Target,
    namespace: str,
    *,
    runs: int = 200,
    rate: float = 20.0,
    concurrency: int = 10,
) -> Latency:
    workflow = bench_workflows.first_step_clock
    async with client(target, namespace) as ow:
        async with worker_process(target, namespace, concurrency) as worker:
            await worker.wait_ready()
            await asyncio.sleep(0.5)  # let the worker settle into its idle wait
            samples = await _paced_starts(ow, workflow, runs, rate)
            outputs = await asyncio.gather(*(s.handle.result(timeout=60) for s in samples))
        statuses = await asyncio.gather(*(s.handle.status() for s in samples))
    first_step = [(out - s.enqueued) * 1000 for out, s in zip(outputs, samples, strict=True)]
    to_claim = [
        (run.started_at.timestamp() - s.enqueued) * 1000
        for run, s in zip(statuses, samples, strict=True)
        if run.started_at is not None
    ]
    start_call = [(s.returned - s.enqueued) * 1000 for s in samples]
    return Latency(
        runs=runs,
        rate_per_s=rate,
        worker_concurrency=concurrency,
        p50_ms=percentile(first_step, 50),
        p99_ms=percentile(first_step, 99),
        max_ms=max(first_step),
        start_call_p50_ms=percentile(start_call, 50),
        to_claim_p50_ms=percentile(to_claim, 50),
        to_claim_p99_ms=percentile(to_claim, 99),
    )


async def _paced_starts(
    ow: ow_es.OpenWorkflow, workflow: ow_es.Workflow[object], runs: int, rate: float
) -> list[_Sample]:
    """One start() every 1/rate seconds on a fixed schedule (no drift)."""
    samples = []
    began = time.perf_counter()
    for index in range(runs):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        enqueued = time.time()
        handle = await ow.start(workflow)
        samples.append(_Sample(enqueued, time.time(), handle))
    return samples


# -- (c) sequential steps ------------------------------------------------------------------------


async def sequential(
    target: Target, namespace: str, *, steps: int = 1000, concurrency: int = 10
) -> Sequential:
    async with client(target, namespace) as ow:
        async with worker_process(target, namespace, concurrency) as worker:
            await worker.wait_ready()
            app = application_name(namespace)
            pg_before = await cpu.backend_cpu_seconds(target.url, app)
            began = time.perf_counter()
            handle = await ow.start(bench_workflows.sequential, steps)
            result = await handle.result(timeout=600)
            client_seconds = time.perf_counter() - began
            pg_after = await cpu.backend_cpu_seconds(target.url, app)
            pg_cpu = cpu.difference(pg_after, pg_before)
        run = await handle.status()
    if result != steps or run.started_at is None or run.finished_at is None:
        raise RuntimeError(f"the sequential run ended oddly: {run.status} {result!r}")
    run_seconds = (run.finished_at - run.started_at).total_seconds()
    return Sequential(
        steps=steps,
        worker_concurrency=concurrency,
        run_seconds=run_seconds,
        ms_per_step=run_seconds * 1000 / steps,
        client_seconds=client_seconds,
        client_ms_per_step=client_seconds * 1000 / steps,
        worker_cpu_ms_per_step=_per(worker.serving_cpu_seconds, steps),
        postgres_cpu_ms_per_step=_per(pg_cpu, steps),
    )


def _per(seconds: float | None, count: int) -> float | None:
    """Milliseconds per item, when the CPU time is known."""
    return None if seconds is None else round(seconds * 1000 / count, 4)
