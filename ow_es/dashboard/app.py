"""The dashboard's ASGI app: the static page, the JSON API, the live stream, ``/metrics``."""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ow_es.client import OpenWorkflow
from ow_es.dashboard import api, fleet
from ow_es.dashboard.auth import AuthMiddleware
from ow_es.dashboard.cache import CountsCache
from ow_es.dashboard.jsonio import (
    ApiError,
    json_response,
    on_api_error,
    on_http_error,
    on_library_error,
    on_unexpected,
)
from ow_es.dashboard.metrics import metrics
from ow_es.dashboard.stream import stream
from ow_es.errors import OwEsError

# The page runs only its own files: no inline script, no other origin (user data that slipped
# into markup could not run).
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
        " frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def static_folder() -> Path:
    """``dashboard_static/``, shipped in the wheel as the package ``ow_es.dashboard_static``."""
    return Path(str(resources.files("ow_es.dashboard_static")))


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


async def healthz(request: Request) -> Response:
    """Up and able to reach the database (no token needed, nothing revealed)."""
    try:
        await api.client_of(request).store.schema_version()
    except OwEsError:
        return json_response({"status": "unavailable"}, 503)
    return json_response({"status": "ok"})


def create_app(client: OpenWorkflow, *, token: str | None = None) -> Starlette:
    """The dashboard over ``client`` (connected by the caller, who also closes it). With
    ``token``, data routes need it (see ``ow_es.dashboard.auth``)."""
    folder = static_folder()

    async def index(request: Request) -> Response:
        return FileResponse(folder / "index.html", headers={"Cache-Control": "no-cache"})

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/api/stream", stream, methods=["GET"]),
            *api.ROUTES,
            *fleet.ROUTES,
            Mount("/static", StaticFiles(directory=folder), name="static"),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(AuthMiddleware, token=token),
        ],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            OwEsError: on_library_error,
            Exception: on_unexpected,
        },
    )
    app.state.client = client
    app.state.counts = CountsCache()
    app.state.stuck_after = fleet.stuck_after_setting()  # OW_ES_STUCK_AFTER, default 600 s
    app.state.stopping = asyncio.Event()  # set when the server stops: live streams end
    return app
