"""``ow-es schedules``: list, pause, resume and trigger cron schedules. The paused state is
stored in the database, so it survives deploys. Each command is one library call."""

from __future__ import annotations

import asyncio

import click
import msgspec

from ow_es.cli import format as fmt
from ow_es.cli.common import Connection, Group, connection_options, json_option, open_client
from ow_es.schedule import ScheduleInfo


@click.group(cls=Group)
def schedules() -> None:
    """Cron schedules: list, pause, resume, trigger."""


@schedules.command("list")
@json_option
@connection_options
def list_schedules(conn: Connection, as_json: bool) -> None:
    """The schedules of this namespace: workflow, cron, zone, next tick, last run and its
    status, paused."""

    async def call() -> list[ScheduleInfo]:
        async with open_client(conn) as client:
            return await client.schedules()

    infos = asyncio.run(call())
    if as_json:
        click.echo(fmt.to_json([msgspec.structs.asdict(i) for i in infos]))
        return
    headers = ["NAME", "WORKFLOW", "CRON", "TIMEZONE", "NEXT TICK", "LAST RUN", "STATUS", "PAUSED"]
    rows = [
        [
            i.name,
            i.workflow_name + (f"@{i.version}" if i.version else ""),
            i.cron,
            i.timezone,
            fmt.time_text(i.next_tick_at),
            i.last_run_id or "-",
            i.last_run_status or "-",
            "yes" if i.paused else "no",
        ]
        for i in infos
    ]
    click.echo(fmt.table(headers, rows))


@schedules.command("pause")
@click.argument("name")
@json_option
@connection_options
def pause(conn: Connection, name: str, as_json: bool) -> None:
    """Stop firing NAME's ticks until `resume`."""

    async def call() -> None:
        async with open_client(conn) as client:
            await client.pause_schedule(name)

    asyncio.run(call())
    click.echo(fmt.to_json({"schedule": name, "paused": True}) if as_json else f"paused {name}")


@schedules.command("resume")
@click.argument("name")
@json_option
@connection_options
def resume(conn: Connection, name: str, as_json: bool) -> None:
    """Fire NAME again (ticks missed while paused follow its catch-up policy)."""

    async def call() -> None:
        async with open_client(conn) as client:
            await client.resume_schedule(name)

    asyncio.run(call())
    click.echo(fmt.to_json({"schedule": name, "paused": False}) if as_json else f"resumed {name}")


@schedules.command("trigger")
@click.argument("name")
@json_option
@connection_options
def trigger(conn: Connection, name: str, as_json: bool) -> None:
    """Start a run of NAME now, outside its cron; prints its run id."""

    async def call() -> str:
        async with open_client(conn) as client:
            return (await client.trigger_schedule(name)).run_id

    run_id = asyncio.run(call())
    click.echo(fmt.to_json({"schedule": name, "run_id": run_id}) if as_json else run_id)
