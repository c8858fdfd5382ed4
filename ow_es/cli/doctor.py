"""``ow-es doctor [APP]``: check the connection, the schema version and the app's workflows.

It looks and changes nothing: no migration, and no SQLite database file is created."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from ow_es.cli import format as fmt
from ow_es.cli.app import label, load_app
from ow_es.cli.common import CliError, Connection, connection_options, json_option, one_line, scrub
from ow_es.cli.project import configured_target
from ow_es.client import OpenWorkflow
from ow_es.errors import OwEsError
from ow_es.store.migrator import latest_version


class Checks:
    """The doctor's findings, printed as they come (or kept for --json); any failure makes the
    exit status 1. Every line is scrubbed of the connection's secrets."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.found: list[dict[str, Any]] = []

    @property
    def failed(self) -> int:
        return sum(1 for check in self.found if not check["ok"])

    def ok(self, what: str, detail: str) -> None:
        self._add(what, True, detail)

    def fail(self, what: str, detail: str) -> None:
        self._add(what, False, detail)

    def _add(self, what: str, ok: bool, detail: str) -> None:
        detail = scrub(detail)
        self.found.append({"check": what, "ok": ok, "detail": detail})
        if not self.as_json:
            click.echo(f"{'ok  ' if ok else 'FAIL'}  {what}: {detail}")


@click.command(short_help="Check the connection, schema version and workflows.")
@click.argument("app", required=False, envvar="OW_ES_APP")
@json_option
@connection_options
def doctor(conn: Connection, app: str | None, as_json: bool) -> None:
    """Check the connection, the schema version and, with APP (or OW_ES_APP, or
    `[tool.ow-es] app` in ./pyproject.toml), the workflows it registers. Nothing is changed:
    a SQLite database that does not exist is reported, not created."""
    checks = Checks(as_json=as_json)
    client = _doctor_client(checks, conn, app)
    if _database_exists(checks, client):
        asyncio.run(_diagnose(checks, client))
    if as_json:
        click.echo(fmt.to_json({"ok": not checks.failed, "checks": checks.found}))
    if checks.failed:
        raise CliError(f"{checks.failed} check(s) failed")
    if not as_json:
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


def _database_exists(checks: Checks, client: OpenWorkflow) -> bool:
    """False (a failed check) for a bad setting or a SQLite file that is not there."""
    try:
        missing = Connection(client.url, client.namespace, client.schema).missing_database()
    except OwEsError as exc:
        checks.fail("connection", one_line(exc))
        return False
    if missing is not None:
        checks.fail("connection", f"no database at {missing}")
        return False
    return True


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
