"""``ow-es limits``: the flow-control limits stored in the database (list, set, clear). An
operator's limits win over those a worker stores from its code, take effect at the next
claim and survive deploys. Each command is one library call."""

from __future__ import annotations

import asyncio
from typing import Any

import click
import msgspec

from ow_es.cli import format as fmt
from ow_es.cli.common import (
    CliError,
    Connection,
    Group,
    connection_options,
    iso,
    json_option,
    open_client,
)
from ow_es.cli.params import RateText
from ow_es.limits import Limits, StoredLimits


@click.group(cls=Group)
def limits() -> None:
    """Flow-control limits stored in the database: list, set, clear."""


def _record(stored: StoredLimits) -> dict[str, Any]:
    record: dict[str, Any] = msgspec.to_builtins(stored)
    return record


@limits.command("list", short_help="List the limits in force, per workflow.")
@json_option
@connection_options
def list_limits(conn: Connection, as_json: bool) -> None:
    """The limits in force, per workflow: concurrency, per key, rate, per-key rate, and who
    stored them (`code`: a worker, from `limits=`; `operator`: `ow-es limits set`)."""

    async def call() -> list[StoredLimits]:
        async with open_client(conn) as client:
            return await client.limits()

    stored = sorted(asyncio.run(call()), key=lambda s: s.workflow_name)
    if as_json:
        click.echo(fmt.to_json([_record(s) for s in stored]))
        return
    if not stored:
        click.echo("no limits stored")
        return
    headers = ["WORKFLOW", "CONCURRENCY", "PER KEY", "RATE", "PER-KEY RATE", "SOURCE", "UPDATED"]
    rows = [
        [
            s.workflow_name,
            _text(s.limits.concurrency),
            _text(s.limits.per_key),
            _text(s.limits.rate),
            _text(s.limits.per_key_rate),
            s.source,
            iso(s.updated_at),
        ]
        for s in stored
    ]
    click.echo(fmt.table(headers, rows))


def _text(value: int | str | None) -> str:
    return "-" if value is None else str(value)


@limits.command("set", short_help="Store an operator's limits for a workflow.")
@click.argument("workflow")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    envvar="OW_ES_LIMITS_CONCURRENCY",
    show_envvar=True,
    help="Runs of WORKFLOW held by workers at once.",
)
@click.option(
    "--per-key",
    type=click.IntRange(min=1),
    envvar="OW_ES_LIMITS_PER_KEY",
    show_envvar=True,
    help="Runs held at once with the same key.",
)
@click.option(
    "--rate",
    type=RateText(),
    envvar="OW_ES_LIMITS_RATE",
    show_envvar=True,
    help="Runs that start (first claim) in any sliding period: N/PERIOD, e.g. 100/1m.",
)
@click.option(
    "--per-key-rate",
    type=RateText(),
    envvar="OW_ES_LIMITS_PER_KEY_RATE",
    show_envvar=True,
    help="The same, per key: N/PERIOD.",
)
@json_option
@connection_options
def set_limits(
    conn: Connection,
    workflow: str,
    concurrency: int | None,
    per_key: int | None,
    rate: str | None,
    per_key_rate: str | None,
    as_json: bool,
) -> None:
    """Store an operator's limits for WORKFLOW (all its versions), replacing what was stored:
    an option left out is no limit. In force at the next claim, and kept across deploys
    until `ow-es limits clear`."""
    if concurrency is None and per_key is None and rate is None and per_key_rate is None:
        raise click.UsageError(
            "give at least one of --concurrency, --per-key, --rate, --per-key-rate"
            " (`ow-es limits clear` removes a workflow's limits)"
        )
    wanted = Limits(concurrency=concurrency, per_key=per_key, rate=rate, per_key_rate=per_key_rate)

    async def call() -> StoredLimits | None:
        async with open_client(conn) as client:
            await client.set_limits(workflow, wanted)
            return await client.store.limits.get(workflow)

    stored = asyncio.run(call())
    if as_json:
        click.echo(fmt.to_json(_record(stored) if stored else None))
        return
    facts = ", ".join(
        f"{name}={value}" for name, value in msgspec.structs.asdict(wanted).items() if value
    )
    click.echo(f"limits of {workflow} set: {facts}")


@limits.command("clear", short_help="Remove a workflow's stored limits.")
@click.argument("workflow")
@json_option
@connection_options
def clear_limits(conn: Connection, workflow: str, as_json: bool) -> None:
    """Remove WORKFLOW's stored limits: none are in force until a worker that declares
    `limits=` for it starts and stores its own."""

    async def call() -> bool:
        async with open_client(conn) as client:
            return await client.clear_limits(workflow)

    if not asyncio.run(call()):
        raise CliError(f"no limits stored for {workflow}")
    if as_json:
        click.echo(fmt.to_json({"workflow_name": workflow, "cleared": True}))
    else:
        click.echo(f"limits of {workflow} cleared")
