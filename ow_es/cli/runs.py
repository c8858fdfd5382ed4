"""``ow-es runs``: list, show, start, cancel and resume runs. Each command is one library call
(bulk cancel pages through ``list_runs`` and cancels each match: ``runs_bulk``)."""

from __future__ import annotations

import asyncio

import click

from ow_es import run_facts
from ow_es.cli import format as fmt
from ow_es.cli.common import Connection, Group, connection_options, json_option, open_client
from ow_es.cli.params import Seconds
from ow_es.cli.runs_bulk import Filters, cancel_matching
from ow_es.cli.runs_start import start_run
from ow_es.models import RUN_STATUSES


@click.group(cls=Group)
def runs() -> None:
    """List, inspect, start, cancel and resume workflow runs."""


runs.add_command(start_run)


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
@json_option
@connection_options
def list_runs(
    conn: Connection,
    status: str | None,
    workflow: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first, with their key and priority; a ready run that a limit keeps
    waiting says so (--json: `held_back`, its reason by run id)."""

    async def call() -> None:
        async with open_client(conn) as client:
            page = await client.list_runs(
                status=status, workflow_name=workflow, limit=limit, cursor=cursor
            )
            held = await run_facts.held_back(client.store, page.runs)
        if as_json:
            click.echo(fmt.to_json({**fmt.page_record(page), "held_back": held}))
            return
        click.echo(fmt.runs_table(page.runs, held) if page.runs else "no runs")
        if page.next_cursor:
            click.echo(f"next cursor: {page.next_cursor}")

    asyncio.run(call())


@runs.command("show")
@click.argument("run_id")
@json_option
@connection_options
def show_run(conn: Connection, run_id: str, as_json: bool) -> None:
    """Show a run (with its key, priority, the schedule it came from, and the limit that
    holds it back if one does), its step attempts and its whole event history."""

    async def call() -> None:
        async with open_client(conn) as client:
            run = await (await client.get_handle(run_id)).status()
            steps = await client.store.step_attempts(run_id)
            events = await client.history(run_id)
            held_back = await client.store.held_back(run)
        schedule = run_facts.schedule_of(run)
        if as_json:
            record = {
                "run": fmt.run_record(run),
                "schedule": schedule,
                "held_back": held_back,
                "steps": steps,
                "events": [fmt.event_record(event) for event in events],
            }
            click.echo(fmt.to_json(record))
            return
        click.echo(fmt.run_details(run, schedule=schedule, held_back=held_back))
        click.echo()
        click.echo(fmt.steps_table(steps))
        click.echo()
        click.echo(fmt.timeline(events))

    asyncio.run(call())


@runs.command("cancel")
@click.argument("run_id", required=False)
@click.option(
    "--status",
    type=click.Choice(RUN_STATUSES),
    envvar="OW_ES_CANCEL_STATUS",
    show_envvar=True,
    help="Without RUN_ID: cancel the runs in this status.",
)
@click.option(
    "--workflow",
    envvar="OW_ES_CANCEL_WORKFLOW",
    show_envvar=True,
    help="Without RUN_ID: cancel the runs of this workflow name.",
)
@click.option(
    "--older-than",
    type=Seconds(),
    envvar="OW_ES_CANCEL_OLDER_THAN",
    show_envvar=True,
    help="Without RUN_ID: cancel the runs created longer ago than this (e.g. 90m, 1h, 2d).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="OW_ES_DRY_RUN",
    show_envvar=True,
    help="Only list what would be canceled.",
)
@click.option(
    "--cascade/--no-cascade",
    default=True,
    show_default=True,
    envvar="OW_ES_CANCEL_CASCADE",
    show_envvar=True,
    help="Also cancel the runs' unfinished child runs.",
)
@json_option
@connection_options
def cancel_run(
    conn: Connection,
    run_id: str | None,
    status: str | None,
    workflow: str | None,
    older_than: float | None,
    dry_run: bool,
    cascade: bool,
    as_json: bool,
) -> None:
    """Cancel the pending or running run RUN_ID (again on a canceled run: nothing to do), or,
    with filters instead of RUN_ID, every pending or running run that matches all of them
    (finished and canceled matches are skipped and counted)."""
    filters = Filters(status=status, workflow=workflow, older_than=older_than)
    if run_id is not None and filters.given:
        raise click.UsageError("give either RUN_ID or filters (--status/--workflow/--older-than)")
    if run_id is None:
        if not filters.given:
            raise click.UsageError(
                "give a RUN_ID, or at least one of --status, --workflow, --older-than"
            )
        asyncio.run(
            cancel_matching(conn, filters, dry_run=dry_run, cascade=cascade, as_json=as_json)
        )
        return

    async def call() -> None:
        async with open_client(conn) as client:
            if not dry_run:
                await client.cancel(run_id, cascade=cascade)
            run = await (await client.get_handle(run_id)).status()
        if as_json:
            click.echo(fmt.to_json({"run_id": run.id, "status": run.status, "dry_run": dry_run}))
        elif dry_run:
            verdict = "nothing to cancel" if run.is_terminal else "would cancel it"
            click.echo(f"run {run.id}: {run.status}, {verdict}")
        else:
            click.echo(f"run {run.id}: {run.status}")

    asyncio.run(call())


@runs.command("resume")
@click.argument("run_id")
@json_option
@connection_options
def resume_run(conn: Connection, run_id: str, as_json: bool) -> None:
    """Resume a failed run from its failed step; its history is kept."""

    async def call() -> None:
        async with open_client(conn) as client:
            handle = await client.resume(run_id)
            run = await handle.status()
        if as_json:
            click.echo(fmt.to_json({"run_id": run.id, "status": run.status}))
        else:
            click.echo(f"run {run.id}: resumed, now {run.status}")

    asyncio.run(call())
