"""``ow-es dashboard``: serve the dashboard (page, JSON API, live stream, ``/metrics``)."""

from __future__ import annotations

import asyncio
import os
from typing import IO, Any

import click

from ow_es.cli.common import Connection, connection_options, open_client
from ow_es.dashboard.auth import TOKEN_ENV, is_loopback


class RefusedToStart(click.ClickException):
    """One ``error: ...`` line, exit status 2 (a setting is missing, nothing was started)."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@click.command("dashboard", short_help="Serve the web dashboard, its JSON API and /metrics.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="OW_ES_DASHBOARD_HOST",
    show_envvar=True,
    help=f"Address to bind. Any but loopback needs {TOKEN_ENV}.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    envvar="OW_ES_DASHBOARD_PORT",
    show_envvar=True,
    help="Port to bind.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="OW_ES_LOG_LEVEL",
    show_envvar=True,
    help="Server log level.",
)
@connection_options
def dashboard(conn: Connection, host: str, port: int, log_level: str) -> None:
    """Serve the dashboard for one namespace: runs, their steps and events, live updates,
    actions (start, cancel, resume, signal), and the database gauges on /metrics.

    With the environment variable OW_ES_DASHBOARD_TOKEN set, every data route (/api/*,
    /metrics) needs it as a bearer token (or as the password of basic auth); the page asks
    for it once per tab. Without it the dashboard only binds and answers loopback."""
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise RefusedToStart(
            f"refusing to serve {host} without a token: set {TOKEN_ENV} (or bind 127.0.0.1)"
        )
    asyncio.run(_serve(conn, host, port, log_level.lower(), token))


async def _serve(conn: Connection, host: str, port: int, log_level: str, token: str | None) -> None:
    from ow_es.dashboard import create_app
    from ow_es.dashboard.server import make_server

    async with open_client(conn) as client:
        server = make_server(
            create_app(client, token=token), host=host, port=port, log_level=log_level
        )
        where = client.settings.describe() if client.settings is not None else "?"
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"ow-es dashboard for {where} on http://{shown}:{port}/", err=True)
        await server.serve()
