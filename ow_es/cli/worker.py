"""``ow-es worker APP``: serve an app's workflows until SIGINT/SIGTERM."""

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
from ow_es.cli.app import label, load_app, require_target
from ow_es.cli.common import Connection, connection_options
from ow_es.client import OpenWorkflow
from ow_es.durations import Duration, to_seconds

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _duration(text: str) -> Duration:
    """A bare number is seconds (handy in env vars); anything else goes to the library."""
    try:
        return float(text)
    except ValueError:
        return text


@click.command("worker", short_help="Run a worker serving APP's workflows.")
@click.argument("app", required=False, envvar="OW_ES_APP")
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    envvar="OW_ES_CONCURRENCY",
    show_envvar=True,
    help="Runs executed at once.",
)
@click.option(
    "--lease",
    default="30s",
    show_default=True,
    envvar="OW_ES_LEASE",
    show_envvar=True,
    help="How long a claim lasts without a heartbeat.",
)
@click.option(
    "--heartbeat",
    envvar="OW_ES_HEARTBEAT",
    show_envvar=True,
    show_default="a third of the lease",
    help="Heartbeat interval.",
)
@click.option(
    "--poll-interval",
    default="1s",
    show_default=True,
    envvar="OW_ES_POLL_INTERVAL",
    show_envvar=True,
    help="Fallback poll for ready runs when no wake-up arrives.",
)
@click.option(
    "--stop-timeout",
    default="30",
    show_default=True,
    envvar="OW_ES_STOP_TIMEOUT",
    show_envvar=True,
    help="On SIGINT/SIGTERM, seconds to let in-flight runs finish before releasing them.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="OW_ES_LOG_LEVEL",
    show_envvar=True,
    help="Level of the worker's log lines on stderr.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    envvar="OW_ES_METRICS_PORT",
    show_envvar=True,
    help="Serve this worker's Prometheus metrics on this port (/metrics, no authentication).",
)
@connection_options
def worker(
    conn: Connection,
    app: str | None,
    concurrency: int,
    lease: str,
    heartbeat: str | None,
    poll_interval: str,
    stop_timeout: str,
    log_level: str,
    metrics_port: int | None,
) -> None:
    """Run a worker for APP: `module:attr` (an ow_es.OpenWorkflow made at import time) or
        `module` (every workflow at its top level). Without APP (or OW_ES_APP), `[tool.ow-es] app`
        from ./pyproject.toml. The first SIGINT/SIGTERM stops it gracefully (in-flight runs get the
    stop timeout), a second one at once (they are handed back to other workers)."""
    client = load_app(require_target(app), conn)
    grace = to_seconds(_duration(stop_timeout), "stop timeout")

    async def call() -> None:
        runner = client.worker(
            concurrency=concurrency,
            lease=_duration(lease),
            heartbeat=None if heartbeat is None else _duration(heartbeat),
            poll_interval=_duration(poll_interval),
            metrics_port=metrics_port,
        )
        _configure_logging(log_level)
        await serve(client, runner, grace)

    asyncio.run(call())
    _exit_without_lingering_threads()


async def serve(client: OpenWorkflow, worker: Worker, stop_timeout: float) -> None:
    """Connect, run the worker, stop it on SIGINT/SIGTERM.

    The handlers are installed before connecting, so a signal at any point stops the worker
    cleanly. They call the public ``worker.stop(timeout=)``: ``run(handle_signals=True)`` has
    no way to take the stop timeout.
    """
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    running: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not stopping:
            click.echo(
                f"{name}: stopping; in-flight runs get {stop_timeout:g}s (again: stop now)",
                err=True,
            )
            stopping.append(loop.create_task(worker.stop(timeout=stop_timeout)))
        elif running:
            click.echo(f"{name}: stopping now; in-flight runs are handed back", err=True)
            running[0].cancel()

    installed = [s for s in _STOP_SIGNALS if _add_handler(loop, s, on_signal)]
    try:
        async with client:
            if not stopping:  # else a signal came while connecting: nothing to serve
                announce = asyncio.create_task(_announce(client, worker))
                running.append(asyncio.create_task(worker.run()))
                try:
                    await asyncio.wait(running)
                    if not running[0].cancelled():  # cancelled: by a second signal
                        running[0].result()
                finally:
                    announce.cancel()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    click.echo(f"worker {worker.worker_id} stopped", err=True)


def _add_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals, fn: Any) -> bool:
    with contextlib.suppress(NotImplementedError, RuntimeError):  # e.g. Windows
        loop.add_signal_handler(sig, fn, sig)
        return True
    return False


async def _announce(client: OpenWorkflow, worker: Worker) -> None:
    """One line once the worker listens and has made its first claim."""
    await worker.ready.wait()
    served = ", ".join(sorted(label(w) for w in client.workflows))
    where = client.settings.describe() if client.settings is not None else "?"
    click.echo(
        f"ow-es worker {worker.worker_id} serving {served} on {where} "
        f"(concurrency {worker.concurrency})"
    )


def _exit_without_lingering_threads() -> None:
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
    click.echo(
        f"{len(lingering)} thread(s) still busy after the stop timeout (their runs were "
        "released): exiting without waiting for them",
        err=True,
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _configure_logging(level: str) -> None:
    """The worker reports claim and heartbeat trouble through ``logging``: show it."""
    logger = logging.getLogger("ow_es")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
