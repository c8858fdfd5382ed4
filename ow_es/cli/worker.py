"""``ow-es worker APP``: serve an app's workflows until SIGINT/SIGTERM (the options; the
serving is ``serve``)."""

from __future__ import annotations

import asyncio

import click

from ow_es import gc_tuning, logging_setup
from ow_es.cli.app import load_app, require_target
from ow_es.cli.common import Connection, connection_options, scrub
from ow_es.cli.params import Seconds
from ow_es.cli.project import LOG_FORMATS, LOG_LEVELS
from ow_es.cli.serve import exit_without_lingering_threads, serve
from ow_es.durations import Duration, to_seconds


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
    "--connect-timeout",
    type=Seconds(),
    default="60",
    show_default=True,
    envvar="OW_ES_CONNECT_TIMEOUT",
    show_envvar=True,
    help="At startup, seconds to keep retrying an unavailable database before exiting 1.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    envvar="OW_ES_LOG_LEVEL",
    show_envvar=True,
    help="Level of the log lines on stderr (the driver's below warning only at debug).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    default="text",
    show_default=True,
    envvar="OW_ES_LOG_FORMAT",
    show_envvar=True,
    help="text: `TIME LEVEL LOGGER: MESSAGE key=value...`; json: one object per line.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    envvar="OW_ES_METRICS_PORT",
    show_envvar=True,
    help="Serve this worker's Prometheus metrics on this port (/metrics, no authentication).",
)
@click.option(
    "--replay-cache-bytes",
    type=click.IntRange(min=0),
    default=64 * 1024 * 1024,
    show_default=True,
    envvar="OW_ES_REPLAY_CACHE_BYTES",
    show_envvar=True,
    help="Memory for the histories of runs this worker parked, so that its next claim of one"
    " reads only the newer events (0: off).",
)
@click.option(
    "--hold-parked-runs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    envvar="OW_ES_HOLD_PARKED_RUNS",
    show_envvar=True,
    help="Runs parked on a sleep or a signal wait whose workflow function this worker keeps"
    " suspended, so that its next claim of one goes on from there instead of replaying the"
    " function (0: off).",
)
@click.option(
    "--gc-threshold",
    type=click.IntRange(min=0),
    default=gc_tuning.DEFAULT_THRESHOLD,
    show_default=True,
    envvar="OW_ES_GC_THRESHOLD",
    show_envvar=True,
    help="Allocations between the garbage collector's first-generation collections in this"
    " process (CPython's default: 700); what the app loaded at startup is frozen. 0: leave the"
    " collector as Python sets it.",
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
    connect_timeout: float,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    replay_cache_bytes: int,
    hold_parked_runs: int,
    gc_threshold: int,
) -> None:
    """Run a worker for APP: `module:attr` (an ow_es.OpenWorkflow made at import time) or
    `module` (every workflow at its top level). Without APP (or OW_ES_APP), `[tool.ow-es] app`
    from ./pyproject.toml. At startup it waits for an unavailable database (up to the connect
    timeout). The first SIGINT/SIGTERM stops it gracefully (in-flight runs get the stop
    timeout), a second one at once (they are handed back to other workers)."""
    client = load_app(require_target(app), conn)
    grace = to_seconds(_duration(stop_timeout), "stop timeout")
    gc_tuning.tune_for_worker(gc_threshold)

    async def call() -> None:
        runner = client.worker(
            concurrency=concurrency,
            lease=_duration(lease),
            heartbeat=None if heartbeat is None else _duration(heartbeat),
            poll_interval=_duration(poll_interval),
            metrics_port=metrics_port,
            replay_cache_bytes=replay_cache_bytes,
            hold_parked_runs=hold_parked_runs,
        )
        await serve(client, runner, grace, connect_timeout)

    restore = logging_setup.configure(log_level, log_format.lower(), scrub=scrub)
    try:
        asyncio.run(call())
        exit_without_lingering_threads()
    finally:
        restore()
