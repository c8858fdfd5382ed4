"""``ow-es retention``: delete (and archive) old terminal runs; ``ow-es import``: load an
archive back."""

from __future__ import annotations

import asyncio
import dataclasses

import click

from ow_es.cli import format as fmt
from ow_es.cli.common import Connection, connection_options, iso, json_option, open_client
from ow_es.cli.params import Seconds
from ow_es.retention import ImportReport, RetentionReport


@click.command(short_help="Delete (and archive) terminal runs that finished long ago.")
@click.option(
    "--older-than",
    type=Seconds(),
    required=True,
    envvar="OW_ES_RETENTION_OLDER_THAN",
    show_envvar=True,
    help="Delete runs that finished more than this long ago (30d, 12h, 0s: all finished).",
)
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, writable=True),
    envvar="OW_ES_RETENTION_ARCHIVE",
    show_envvar=True,
    help="First append each run as a JSON line to this gzip file (FILE.jsonl.gz).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="OW_ES_DRY_RUN",
    show_envvar=True,
    help="Only count what would be deleted.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    envvar="OW_ES_RETENTION_BATCH",
    show_envvar=True,
    help="Run trees per transaction.",
)
@json_option
@connection_options
def retention(
    conn: Connection,
    older_than: float,
    archive: str | None,
    dry_run: bool,
    batch: int,
    as_json: bool,
) -> None:
    """Delete the terminal runs of the namespace that finished before the cutoff, with their
    step attempts and events, a whole run tree at a time (only when every run of it is
    terminal and old enough), one transaction per batch. Several processes may run it at
    once."""

    async def call() -> RetentionReport:
        async with open_client(conn) as client:
            return await client.retention(
                older_than=older_than, archive=archive, dry_run=dry_run, batch=batch
            )

    report = asyncio.run(call())
    if as_json:
        click.echo(fmt.to_json(dataclasses.asdict(report)))
        return
    done = "would delete" if report.dry_run else "deleted"
    line = (
        f"{done} {report.runs} run(s), {report.steps} step attempt(s), {report.events} event(s)"
        f" finished before {iso(report.cutoff)}"
    )
    if report.archive is not None and not report.dry_run:
        line += f"; {report.archived} run(s) archived to {report.archive}"
    if report.signal_sends:
        verb = "to forget" if report.dry_run else "forgotten"
        line += f"; {report.signal_sends} signal send key(s) {verb}"
    click.echo(line + ("; nothing was deleted (dry run)" if report.dry_run else ""))


@click.command(name="import", short_help="Load a retention archive back.")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@json_option
@connection_options
def import_archive(conn: Connection, archive: str, as_json: bool) -> None:
    """Load the runs of ARCHIVE (written by `ow-es retention --archive`) back into the
    namespace, as they were. Runs that already exist are skipped and counted."""

    async def call() -> ImportReport:
        async with open_client(conn) as client:
            return await client.import_archive(archive)

    report = asyncio.run(call())
    if as_json:
        click.echo(fmt.to_json(dataclasses.asdict(report)))
        return
    click.echo(
        f"imported {report.imported} run(s) ({report.steps} step attempt(s), {report.events}"
        f" event(s)); skipped {len(report.skipped)} that already exist"
    )
