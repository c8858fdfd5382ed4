"""What every ``ow-es`` command shares: connection options, one-line errors, opening a client."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

import click

from ow_es import config
from ow_es.client import OpenWorkflow
from ow_es.errors import OwEsError, StoreUnavailable
from ow_es.store.migrator import latest_version

R = TypeVar("R")


# The connection strings this command was given: their passwords are scrubbed from every
# line it prints (a driver's message can echo a host that holds a password's tail).
_CONNECTION_STRINGS: set[str] = set()


def keep_secret(url: str | None) -> None:
    """Scrub ``url``'s passwords from everything this command prints."""
    if url:
        _CONNECTION_STRINGS.add(url)


def scrub(text: str) -> str:
    """``text`` without the secrets of the connection strings in use."""
    return config.redact_text(text, _CONNECTION_STRINGS)


class CliError(click.ClickException):
    """A failure shown as one ``error: <cause>`` line on stderr, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {scrub(self.format_message())}", err=True)


def one_line(exc: BaseException) -> str:
    """The exception's message (and its cause, if any) folded into one line."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 3:
        text = "; ".join(line.strip() for line in str(current).splitlines() if line.strip())
        parts.append(text or type(current).__name__)
        current = current.__cause__  # explicit causes only: `from None` hides the driver's
    return ": ".join(parts)


class Group(click.Group):
    """A command group whose library errors end as one line, never as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (OwEsError, ValueError) as exc:
            # ValueError: the library reports bad durations and counts that way.
            raise CliError(one_line(exc)) from exc


@dataclass(frozen=True)
class Connection:
    """The connection options as given; None leaves the choice to ``ow_es.config.resolve``."""

    url: str | None
    namespace: str | None
    schema: str | None

    def __post_init__(self) -> None:
        keep_secret(self.url)

    def client(self, *, migrate: bool) -> OpenWorkflow:
        return OpenWorkflow(self.url, self.namespace, self.schema, migrate=migrate)

    def missing_database(self) -> str | None:
        """The absolute path of a SQLite database file that does not exist (yet), else None:
        commands that only look must not create it by connecting."""
        settings = config.resolve(self.url, self.namespace, self.schema)
        path = settings.sqlite_path
        if settings.backend != "sqlite" or path is None or path == ":memory:":
            return None
        return None if os.path.exists(path) else os.path.abspath(path)


_CONNECTION_OPTIONS = (
    click.option(
        "--database-url",
        envvar=["OW_ES_DATABASE_URL", "OPENWORKFLOW_POSTGRES_URL"],
        show_envvar=True,
        show_default="sqlite:///openworkflow.db",
        help="postgresql://... or sqlite:///path.db",
    ),
    click.option(
        "--namespace",
        envvar="OPENWORKFLOW_NAMESPACE_ID",
        show_envvar=True,
        show_default="default",
        help="Namespace of the runs.",
    ),
    click.option(
        "--schema",
        envvar="OPENWORKFLOW_SCHEMA",
        show_envvar=True,
        show_default="openworkflow",
        help="PostgreSQL schema (ignored on SQLite).",
    ),
)


def connection_options(fn: Callable[..., R]) -> Callable[..., R]:
    """Add --database-url/--namespace/--schema; the command receives them as ``conn``."""

    @functools.wraps(fn)
    def command(
        *args: Any,
        database_url: str | None,
        namespace: str | None,
        schema: str | None,
        **kwargs: Any,
    ) -> R:
        return fn(*args, conn=Connection(database_url, namespace, schema), **kwargs)

    for option in reversed(_CONNECTION_OPTIONS):
        command = option(command)
    return command


async def require_current_schema(client: OpenWorkflow) -> int:
    """The schema version, or a clear error when migrations are pending: commands that only
    read or manage runs must not change the schema behind the operator's back."""
    store = client.store
    version = await store.schema_version()
    latest = latest_version(store.dialect)
    if version < latest:
        raise StoreUnavailable(
            f"the database schema is at version {version}, this ow-es needs {latest}: "
            "run `ow-es migrate`"
        )
    return version


@contextlib.asynccontextmanager
async def open_client(conn: Connection) -> AsyncIterator[OpenWorkflow]:
    """A connected client that leaves the schema alone; closed on exit."""
    missing = conn.missing_database()
    if missing is not None:
        raise CliError(f"no database at {missing}: run `ow-es migrate` to create it")
    async with conn.client(migrate=False) as client:
        await require_current_schema(client)
        yield client


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="OW_ES_JSON",
    show_envvar=True,
    help="Print machine-readable JSON (times as ISO-8601).",
)


def iso(moment: datetime | None, *, millis: bool = False) -> str:
    """An aware time as compact ISO-8601 UTC (``2024-05-01T12:00:00Z``); '-' for none."""
    if moment is None:
        return "-"
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds" if millis else "seconds")
    return text.replace("+00:00", "Z")
