"""``ow-es runs start WORKFLOW``: start a run by name, print its id (and, waiting, its result)."""

from __future__ import annotations

import asyncio
from typing import Any

import click
import msgspec
from click.core import ParameterSource

from ow_es.cli import format as fmt
from ow_es.cli.common import Connection, connection_options, json_option, open_client
from ow_es.cli.params import JsonValue, Seconds
from ow_es.errors import ResultTimeout, WorkflowCanceled, WorkflowFailed
from ow_es.handle import RunHandle


@click.command("start", short_help="Start a run of WORKFLOW by name; print its id.")
@click.argument("workflow")
@click.option(
    "--input",
    "input_",
    type=JsonValue(),
    envvar="OW_ES_START_INPUT",
    show_envvar=True,
    show_default="null",
    help="The run's input, as JSON.",
)
@click.option(
    "--version",
    envvar="OW_ES_START_VERSION",
    show_envvar=True,
    help="The workflow version to start.",
)
@click.option(
    "--key",
    envvar="OW_ES_START_KEY",
    show_envvar=True,
    help="Idempotency key: the run already started with this key is returned instead.",
)
@click.option(
    "--limit-key",
    envvar="OW_ES_START_LIMIT_KEY",
    show_envvar=True,
    help="The run's key for per-key limits (e.g. a tenant id).",
)
@click.option(
    "--priority",
    type=int,
    default=0,
    envvar="OW_ES_START_PRIORITY",
    show_envvar=True,
    show_default=True,
    help="Higher is claimed first.",
)
@click.option(
    "--wait",
    is_flag=True,
    envvar="OW_ES_START_WAIT",
    show_envvar=True,
    help="Wait for the run to finish and print its result as JSON; exit 1 if it fails.",
)
@click.option(
    "--timeout",
    type=Seconds(),
    envvar="OW_ES_START_TIMEOUT",
    show_envvar=True,
    show_default="no limit",
    help="With --wait: give up waiting after this long (e.g. 30, 90s, 5m) and exit 1.",
)
@json_option
@connection_options
@click.pass_context
def start_run(
    ctx: click.Context,
    conn: Connection,
    workflow: str,
    input_: Any,
    version: str | None,
    key: str | None,
    limit_key: str | None,
    priority: int,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Start a run of WORKFLOW (a name; workers serving it run it) and print its run id. With
    --key, the run that key already started is printed instead. With --wait, the result
    follows as one line of JSON; a failed, canceled or timed-out run prints its error and
    exits 1."""
    if (
        timeout is not None
        and not wait
        and ctx.get_parameter_source("timeout") == (ParameterSource.COMMANDLINE)
    ):
        raise click.UsageError("--timeout only goes with --wait")

    async def call() -> None:
        async with open_client(conn) as client:
            handle = await client.start(
                workflow,
                input_,
                version=version,
                idempotency_key=key,
                key=limit_key,
                priority=priority,
            )
            if not wait:
                run = await handle.status()
                record = {"run_id": run.id, "workflow": run.workflow_name, "status": run.status}
                click.echo(fmt.to_json(record) if as_json else handle.run_id)
                return
            if not as_json:
                click.echo(handle.run_id)
            await _wait(handle, timeout, as_json=as_json)

    asyncio.run(call())


async def _wait(handle: RunHandle, timeout: float | None, *, as_json: bool) -> None:
    try:
        result = await handle.result(timeout=timeout)
    except (WorkflowFailed, WorkflowCanceled, ResultTimeout):
        if as_json:  # the record first; the error line and exit status 1 follow
            run = await handle.status()
            record = {"run_id": run.id, "workflow": run.workflow_name, "status": run.status}
            click.echo(fmt.to_json(record | {"error": run.error}))
        raise
    if as_json:
        record = {"run_id": handle.run_id, "workflow": handle.workflow_name, "status": "completed"}
        click.echo(fmt.to_json(record | {"result": result}))
    else:
        click.echo(msgspec.json.encode(result).decode())
