"""``ow-es runs``: list, show, cancel and resume runs. Each command is one library call."""

from __future__ import annotations

import asyncio

import click

from ow_es.cli import format as fmt
from ow_es.cli.common import Connection, Group, connection_options, open_client
from ow_es.models import RUN_STATUSES

_json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="OW_ES_JSON",
    show_envvar=True,
    help="Print machine-readable JSON (times as ISO-8601).",
)


@click.group(cls=Group)
def runs() -> None:
    """List, inspect, cancel and resume workflow runs."""


@runs.command("list")
@click.option(
    "--status",
    type=click.Choice(RUN_STATUSES),
    envvar="OW_ES_RUNS_STATUS",
    show_envvar=True,
    help="Only runs in this status.",
)
@click.option(
    "--workflow",
    envvar="OW_ES_RUNS_WORKFLOW",
    show_envvar=True,
    help="Only runs of this workflow name.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=50,
    show_default=True,
    envvar="OW_ES_RUNS_LIMIT",
    show_envvar=True,
    help="Runs per page.",
)
@click.option(
    "--cursor",
    envvar="OW_ES_RUNS_CURSOR",
    show_envvar=True,
    help="Continue after a previous page (its printed next cursor).",
)
@_json_option
@connection_options
def list_runs(
    conn: Connection,
    status: str | None,
    workflow: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first."""

    async def call() -> None:
        async with open_client(conn) as client:
            page = await client.list_runs(
                status=status, workflow_name=workflow, limit=limit, cursor=cursor
            )
        if as_json:
            click.echo(fmt.to_json(page))
            return
        click.echo(fmt.runs_table(page.runs) if page.runs else "no runs")
        if page.next_cursor:
            click.echo(f"next cursor: {page.next_cursor}")

    asyncio.run(call())


@runs.command("show")
@click.argument("run_id")
@_json_option
@connection_options
def show_run(conn: Connection, run_id: str, as_json: bool) -> None:
    """Show a run, its step attempts and its whole event history."""

    async def call() -> None:
        async with open_client(conn) as client:
            run = await (await client.get_handle(run_id)).status()
            steps = await client.store.step_attempts(run_id)
            events = await client.history(run_id)
        if as_json:
            click.echo(fmt.to_json({"run": run, "steps": steps, "events": events}))
            return
        click.echo(fmt.run_details(run))
        click.echo()
        click.echo(fmt.steps_table(steps))
        click.echo()
        click.echo(fmt.timeline(events))

    asyncio.run(call())


@runs.command("cancel")
@click.argument("run_id")
@click.option(
    "--cascade/--no-cascade",
    default=True,
    show_default=True,
    envvar="OW_ES_CANCEL_CASCADE",
    show_envvar=True,
    help="Also cancel the run's unfinished child runs.",
)
@connection_options
def cancel_run(conn: Connection, run_id: str, cascade: bool) -> None:
    """Cancel a pending or running run (again on a canceled run: nothing to do)."""

    async def call() -> None:
        async with open_client(conn) as client:
            await client.cancel(run_id, cascade=cascade)
            run = await (await client.get_handle(run_id)).status()
        click.echo(f"run {run.id}: {run.status}")

    asyncio.run(call())


@runs.command("resume")
@click.argument("run_id")
@connection_options
def resume_run(conn: Connection, run_id: str) -> None:
    """Resume a failed run from its failed step; its history is kept."""

    async def call() -> None:
        async with open_client(conn) as client:
            handle = await client.resume(run_id)
            run = await handle.status()
        click.echo(f"run {run.id}: resumed, now {run.status}")

    asyncio.run(call())
