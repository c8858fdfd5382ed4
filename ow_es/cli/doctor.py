"""``ow-es doctor [APP]``: check the connection, the schema version and the app's workflows.

It looks and changes nothing: no migration, and no SQLite database file is created."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from ow_es.cli import format as fmt
from ow_es.cli.app import label, load_app
from ow_es.cli.common import CliError, Connection, connection_options, json_option, one_line, scrub
from ow_es.cli.params import Seconds
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


@click.command(short_help="Check the connection, schema, workflows, workers and stranded runs.")
@click.argument("app", required=False, envvar="OW_ES_APP")
@click.option(
    "--stuck-after",
    type=Seconds(),
    default="10m",
    show_default=True,
    envvar="OW_ES_STUCK_AFTER",
    show_envvar=True,
    help="A run held by a worker with no event for this long is reported as stuck.",
)
@json_option
@connection_options
def doctor(conn: Connection, app: str | None, stuck_after: float, as_json: bool) -> None:
    """Check the connection, the schema version and, with APP (or OW_ES_APP, or
    `[tool.ow-es] app` in ./pyproject.toml), the workflows it registers; then the live
    workers, ready runs that no live worker serves, runs held without progress and unowned
    runs. Nothing is changed: a SQLite database that does not exist is reported, not
    created."""
    checks = Checks(as_json=as_json)
    client = _doctor_client(checks, conn, app)
    if _database_exists(checks, client):
        asyncio.run(_diagnose(checks, client, stuck_after))
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


async def _diagnose(checks: Checks, client: OpenWorkflow, stuck_after: float) -> None:
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
            return
        await _runs(checks, client, stuck_after)


async def _runs(checks: Checks, client: OpenWorkflow, stuck_after: float) -> None:
    """What the worker registry says about the runs: who serves them, which are stranded."""
    store = client.store
    workers = await client.workers()
    serving = "; ".join(
        f"{w.id} ({', '.join(_pair(*pair) for pair in w.workflows)}, {w.busy}/{w.concurrency} busy)"
        for w in workers
    )
    checks.ok("workers", f"{len(workers)} live" + (f": {serving}" if serving else ""))
    unserved = await store.registry.unserved_runs()
    if unserved:
        listed = ", ".join(
            f"{_pair(n, v)} x{count}" for (n, v), count in sorted(unserved.items(), key=str)
        )
        checks.fail(
            "unserved runs",
            f"{sum(unserved.values())} ready run(s) no live worker serves: {listed}",
        )
    else:
        checks.ok("unserved runs", "none: every ready run has a live worker serving it")
    stuck = await store.registry.stuck_runs(stuck_after, limit=20)
    if stuck:
        listed = ", ".join(f"{r.id} ({r.workflow_name} on {r.worker_id})" for r in stuck)
        checks.fail("stuck runs", f"held with no event for over {stuck_after:g}s: {listed}")
    else:
        checks.ok("stuck runs", f"none held with no event for over {stuck_after:g}s")
    unowned = await store.count_unowned()
    if unowned:
        checks.fail("unowned runs", f"{unowned} run(s) with neither a live lease nor a timer")
    else:
        checks.ok("unowned runs", "none")


def _pair(name: str, version: str | None) -> str:
    return name if version is None else f"{name}@{version}"
