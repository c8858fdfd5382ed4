"""``ow-es reproject``: rebuild the projections from the event log, online."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from ow_es.cli import format as fmt
from ow_es.cli.common import CliError, Connection, connection_options, json_option, open_client
from ow_es.reproject import Report


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """click's progress bar on a terminal; silent otherwise (logs, CI)."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=max(total, 1), label="folding events", file=sys.stderr) as bar:
        yield bar.update


def _summary(report: Report, *, verify: bool) -> str:
    if verify:
        return f"verified {report.events} events: {len(report.differences)} row(s) differ"
    return (
        f"rebuilt from {report.events} events and swapped in "
        f"(gate held {report.gate_seconds * 1000:.1f} ms, {report.gate_attempts} attempt(s));"
        " the replaced tables are kept as workflow_runs_previous / step_attempts_previous"
    )


@click.command(short_help="Rebuild workflow_runs and step_attempts from the event log.")
@click.option(
    "--verify",
    is_flag=True,
    envvar="OW_ES_REPROJECT_VERIFY",
    show_envvar=True,
    help="Rebuild and compare with the live tables; exit 1 naming the rows that differ.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="OW_ES_DRY_RUN",
    show_envvar=True,
    help="Only report what would be rebuilt.",
)
@json_option
@connection_options
def reproject(conn: Connection, verify: bool, dry_run: bool, as_json: bool) -> None:
    """Rebuild the projections of the whole schema (every namespace) from the event log into
    shadow tables, then swap them in under a brief append gate. Workers keep running; an
    interrupted rebuild resumes where it stopped."""

    async def call() -> Report:
        async with open_client(conn) as client:
            if dry_run:
                return await client.reproject(dry_run=True)
            counts = await client.reproject(dry_run=True)
            with _progress(counts.counts.get("events", 0)) as progress:
                return await client.reproject(verify=verify, progress=progress)

    report = asyncio.run(call())
    if as_json:
        click.echo(fmt.to_json({"dry_run": dry_run, "verify": verify, "report": report}))
    elif dry_run:
        counts = report.counts
        click.echo(
            f"would rebuild {counts['workflow_runs']} run row(s) and {counts['step_attempts']}"
            f" step attempt row(s) from {counts['events']} event(s); nothing written"
        )
    else:
        click.echo(_summary(report, verify=verify))
        for difference in report.differences:
            click.echo(f"  {difference.describe()}")
    if report.differences:
        raise CliError(f"{len(report.differences)} projection row(s) differ from the log")
