"""Running a worker process: wait for the database, serve until SIGINT/SIGTERM, leave."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import click

from ow_es import Worker
from ow_es.cli.app import label
from ow_es.cli.common import CliError, one_line
from ow_es.client import OpenWorkflow
from ow_es.errors import SchemaMismatch, StoreUnavailable

log = logging.getLogger("ow_es.cli")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FIRST_RETRY = 0.5  # seconds; doubling up to
LAST_RETRY = 5.0


async def connect_patiently(client: OpenWorkflow, timeout: float, stop: asyncio.Event) -> bool:
    """Connect, retrying an unavailable database (0.5 s doubling to 5 s) for up to ``timeout``
    seconds, one log line per failed attempt. False when ``stop`` is set meanwhile. A database
    migrated by a newer ow-es (SchemaMismatch) and bad settings fail at once."""
    deadline = time.monotonic() + timeout
    delay = FIRST_RETRY
    attempt = 0
    while True:
        attempt += 1
        try:
            await client.connect()
        except SchemaMismatch:
            raise
        except StoreUnavailable as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CliError(
                    f"database still unavailable after {timeout:g}s ({attempt} attempt(s)): "
                    f"{one_line(exc)}"
                ) from None
            wait = min(delay, remaining)
            log.warning(
                "database unavailable, retrying in %gs: %s",
                round(wait, 3),
                one_line(exc),
                extra={"attempt": attempt},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return False
            delay = min(delay * 2, LAST_RETRY)
        else:
            return True


async def serve(
    client: OpenWorkflow, worker: Worker, stop_timeout: float, connect_timeout: float
) -> None:
    """Connect (waiting for the database), run the worker, stop it on SIGINT/SIGTERM.

    The handlers are installed before connecting, so a signal at any point stops the worker
    cleanly. They call the public ``worker.stop(timeout=)``: ``run(handle_signals=True)`` has
    no way to take the stop timeout.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stopping: list[asyncio.Task[None]] = []
    running: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        stop.set()
        if not stopping:
            log.info("%s: stopping; in-flight runs get %gs (again: stop now)", name, stop_timeout)
            stopping.append(loop.create_task(worker.stop(timeout=stop_timeout)))
        elif running:
            log.info("%s: stopping now; in-flight runs are handed back", name)
            running[0].cancel()

    installed = [s for s in _STOP_SIGNALS if _add_handler(loop, s, on_signal)]
    try:
        if await connect_patiently(client, connect_timeout, stop):
            async with client:
                if not stopping:  # else a signal came while connecting: nothing to serve
                    await _run(client, worker, running)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    log.info("worker %s stopped", worker.worker_id)


async def _run(client: OpenWorkflow, worker: Worker, running: list[asyncio.Task[None]]) -> None:
    announce = asyncio.create_task(_announce(client, worker))
    running.append(asyncio.create_task(worker.run()))
    try:
        await asyncio.wait(running)
        if not running[0].cancelled():  # cancelled: by a second signal
            running[0].result()
    finally:
        announce.cancel()


def _add_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals, fn: Any) -> bool:
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # e.g. Windows
        loop.add_signal_handler(sig, fn, sig)
        return True
    return False


async def _announce(client: OpenWorkflow, worker: Worker) -> None:
    """One line on stdout once the worker listens and has made its first claim."""
    await worker.ready.wait()
    served = ", ".join(sorted(label(w) for w in client.workflows))
    where = client.settings.describe() if client.settings is not None else "?"
    click.echo(
        f"ow-es worker {worker.worker_id} serving {served} on {where} "
        f"(concurrency {worker.concurrency})"
    )


def exit_without_lingering_threads() -> None:
    """Leave even if a sync step is still running in its thread.

    Its run was released when the stop timeout passed, so nothing is lost; but the interpreter
    joins executor threads at exit, which would hold the process until the step returned.
    """
    lingering = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    # Idle pool threads leave as soon as the pool shuts down: give them a moment, so only
    # threads that are really busy with a step count.
    deadline = time.monotonic() + 0.5
    for thread in lingering:
        thread.join(max(0.0, deadline - time.monotonic()))
    lingering = [t for t in lingering if t.is_alive()]
    if not lingering:
        return
    log.warning(
        "%d thread(s) still busy after the stop timeout (their runs were released): "
        "exiting without waiting for them",
        len(lingering),
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
