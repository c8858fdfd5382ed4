"""Serving the app with uvicorn, so that live streams end when the server stops (uvicorn
waits for open responses before it stops, and a stream never ends by itself)."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.applications import Starlette


class DashboardServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, stopping: asyncio.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.stopping.set()  # open streams see it within their poll interval and end
        await super().shutdown(sockets)


def make_server(app: Starlette, *, host: str, port: int, log_level: str) -> DashboardServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    return DashboardServer(config, stopping=app.state.stopping)
