"""The ``ow-es`` command line: a thin layer over the library, one client per command.

Every option reads an environment variable (shown in ``--help``); library errors print one
``error: ...`` line on stderr and exit 1.
"""

from __future__ import annotations

import asyncio

import click

from ow_es import __version__
from ow_es.cli.app import configured_target, label, load_app, project_settings
from ow_es.cli.common import CliError, Connection, Group, connection_options, one_line
from ow_es.cli.dashboard import dashboard
from ow_es.cli.reproject import reproject
from ow_es.cli.runs import runs
from ow_es.cli.worker import worker
from ow_es.client import OpenWorkflow
from ow_es.errors import OwEsError
from ow_es.store.migrator import latest_version

# `[tool.ow-es]` keys in ./pyproject.toml that set worker options (below flags and env vars).
WORKER_SETTINGS = (
    "concurrency",
    "lease",
    "heartbeat",
    "poll_interval",
    "stop_timeout",
    "log_level",
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ow-es")
@click.pass_context
def main(ctx: click.Context) -> None:
    """ow-es: durable, event-sourced workflows on PostgreSQL or SQLite.

    Worker options may also come from `[tool.ow-es]` in ./pyproject.toml (app, concurrency,
    lease, heartbeat, poll_interval, stop_timeout, log_level); flags and environment
    variables win over it."""
    table = project_settings()
    worker_defaults = {
        key: str(table[key]) if key != "concurrency" else table[key]
        for key in WORKER_SETTINGS
        if key in table
    }
    ctx.default_map = {"worker": worker_defaults}


main.add_command(worker)
main.add_command(runs)
main.add_command(reproject)
main.add_command(dashboard)


@main.command(short_help="Apply (or list) pending schema migrations.")
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="OW_ES_DRY_RUN",
    show_envvar=True,
    help="Only print the migrations that would be applied.",
)
@connection_options
def migrate(conn: Connection, dry_run: bool) -> None:
    """Apply the pending schema migrations (or, with --dry-run, list them)."""

    async def call() -> None:
        async with conn.client(migrate=False) as client:
            names = await client.store.migrate(dry_run=dry_run)
            version = await client.store.schema_version()
            where = client.settings.describe() if client.settings is not None else "?"
        for name in names:
            click.echo(f"{'would apply' if dry_run else 'applied'} {name}")
        if not names:
            click.echo(f"up to date: {where} at schema version {version}")
        elif not dry_run:
            click.echo(f"{where} now at schema version {version}")

    asyncio.run(call())


class Checks:
    """The doctor's findings, printed as they come; any failure makes the exit status 1."""

    def __init__(self) -> None:
        self.failed = 0

    def ok(self, what: str, detail: str) -> None:
        click.echo(f"ok    {what}: {detail}")

    def fail(self, what: str, detail: str) -> None:
        self.failed += 1
        click.echo(f"FAIL  {what}: {detail}")


@main.command(short_help="Check the connection, schema version and workflows.")
@click.argument("app", required=False, envvar="OW_ES_APP")
@connection_options
def doctor(conn: Connection, app: str | None) -> None:
    """Check the connection, the schema version and, with APP (or OW_ES_APP, or
    `[tool.ow-es] app` in ./pyproject.toml), the workflows it registers."""
    checks = Checks()
    client = _doctor_client(checks, conn, app)
    asyncio.run(_diagnose(checks, client))
    if checks.failed:
        raise CliError(f"{checks.failed} check(s) failed")
    click.echo("all checks passed")


def _doctor_client(checks: Checks, conn: Connection, app: str | None) -> OpenWorkflow:
    """The app's client (reporting its workflows), else a plain one; never migrating."""
    client = None
    try:
        target = app or configured_target()
        client = load_app(target, conn) if target else None
    except CliError as exc:
        checks.fail("app", exc.format_message())
    else:
        if client is not None:
            served = ", ".join(sorted(label(w) for w in client.workflows))
            checks.ok("app", f"{target} registers {len(client.workflows)} workflow(s): {served}")
    client = client or conn.client(migrate=False)
    client.migrate = False  # the doctor looks, it does not change the schema
    return client


async def _diagnose(checks: Checks, client: OpenWorkflow) -> None:
    try:
        await client.connect()
    except OwEsError as exc:
        checks.fail("connection", one_line(exc))
        return
    async with client:
        where = client.settings.describe() if client.settings is not None else "?"
        checks.ok("connection", where)
        version = await client.store.schema_version()
        latest = latest_version(client.store.dialect)
        if version == latest:
            checks.ok("schema", f"version {version} (latest)")
        else:
            checks.fail(
                "schema", f"version {version}, this ow-es expects {latest}: run `ow-es migrate`"
            )


if __name__ == "__main__":
    main()
