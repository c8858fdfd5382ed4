"""``ow-es migrate``: apply (or, with --dry-run, list) the pending schema migrations."""

from __future__ import annotations

import asyncio

import click

from ow_es.cli import format as fmt
from ow_es.cli.common import Connection, connection_options, json_option
from ow_es.store.migrator import migrations


@click.command(short_help="Apply (or list) pending schema migrations.")
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="OW_ES_DRY_RUN",
    show_envvar=True,
    help="Only print the migrations that would be applied (creates no database).",
)
@json_option
@connection_options
def migrate(conn: Connection, dry_run: bool, as_json: bool) -> None:
    """Apply the pending schema migrations (or, with --dry-run, list them). A SQLite database
    file that does not exist is created, except by --dry-run."""
    missing = conn.missing_database() if dry_run else None
    if missing is not None:  # looking must not create it: every migration is pending
        names = [m.name for m in migrations("sqlite")]
        where, version = f"no database at {missing}", 0
    else:
        names, where, version = asyncio.run(_migrate(conn, dry_run=dry_run))
    if as_json:
        record = {"database": where, "dry_run": dry_run, "migrations": names}
        click.echo(fmt.to_json(record | {"schema_version": version}))
        return
    if missing is not None:
        click.echo(where)
    for name in names:
        click.echo(f"{'would apply' if dry_run else 'applied'} {name}")
    if not names:
        click.echo(f"up to date: {where} at schema version {version}")
    elif not dry_run:
        click.echo(f"{where} now at schema version {version}")


async def _migrate(conn: Connection, *, dry_run: bool) -> tuple[list[str], str, int]:
    """The migrations applied (or pending), where, and the schema version now."""
    async with conn.client(migrate=False) as client:
        names = await client.store.migrate(dry_run=dry_run)
        version = await client.store.schema_version()
        where = client.settings.describe() if client.settings is not None else "?"
    return names, where, version
