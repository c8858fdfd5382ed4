"""``ow-es signal NAME``: send a signal to every run waiting on it."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from ow_es.cli import format as fmt
from ow_es.cli.common import Connection, connection_options, json_option, open_client
from ow_es.cli.params import JsonValue


@click.command("signal", short_help="Send signal NAME to the runs waiting on it.")
@click.argument("name")
@click.option(
    "--data",
    type=JsonValue(),
    envvar="OW_ES_SIGNAL_DATA",
    show_envvar=True,
    show_default="null",
    help="The signal's data, as JSON.",
)
@click.option(
    "--key",
    envvar="OW_ES_SIGNAL_KEY",
    show_envvar=True,
    help="Idempotency key: a send with a key already used delivers nothing again.",
)
@json_option
@connection_options
def signal(conn: Connection, name: str, data: Any, key: str | None, as_json: bool) -> None:
    """Deliver signal NAME (with --data) to every run waiting on it and print the ids of the
    runs it reached, one per line (nothing when no run was waiting)."""

    async def call() -> list[str]:
        async with open_client(conn) as client:
            return await client.send_signal(name, data, idempotency_key=key)

    delivered = asyncio.run(call())
    if as_json:
        click.echo(fmt.to_json({"signal": name, "delivered_to": delivered}))
    else:
        for run_id in delivered:
            click.echo(run_id)
