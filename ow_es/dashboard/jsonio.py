"""JSON in and out: bodies, ISO-8601 times, and errors as ``{"error": "..."}``."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ow_es.errors import (
    InvalidTransition,
    OwEsError,
    RunNotFound,
    StoreUnavailable,
    ValidationError,
)
from ow_es.models import Event, RunState, WorkflowRun

log = logging.getLogger("ow_es.dashboard")
_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    """A request the API refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def to_builtins(value: Any) -> Any:
    """Structs to dicts, times to ISO-8601 strings (UTC, ``Z``); claim tokens (a worker's
    fencing secret, in run rows and ``run_claimed`` events) are left out."""
    return msgspec.to_builtins(_without_tokens(value))


def _without_tokens(value: Any) -> Any:
    """The response's runs and events without claim tokens (user data is not walked)."""
    if isinstance(value, WorkflowRun):
        return msgspec.structs.replace(value, claim_token=None)
    if isinstance(value, Event) and "claim_token" in value.data:
        data = {k: v for k, v in value.data.items() if k != "claim_token"}
        return msgspec.structs.replace(value, data=data)
    if isinstance(value, RunState):
        return msgspec.structs.replace(value, run=_without_tokens(value.run))
    if isinstance(value, dict):
        return {k: _without_tokens(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_tokens(v) for v in value]
    return value


def json_response(body: Any, status: int = 200) -> Response:
    return Response(
        _encoder.encode(to_builtins(body)),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def dumps(value: Any) -> str:
    return _encoder.encode(to_builtins(value)).decode()


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object: 400 when it is not JSON, 422 when it is not an object."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise ApiError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the request body must be a JSON object")
    return body


def optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ApiError(422, f"{key} must be a string")
    return value


def required_str(body: dict[str, Any], key: str) -> str:
    value = optional_str(body, key)
    if not value:
        raise ApiError(422, f"{key} is required (a non-empty string)")
    return value


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail))


_STATUS_OF: list[tuple[type[Exception], int]] = [
    (RunNotFound, 404),
    (InvalidTransition, 409),
    (ValidationError, 422),
    (StoreUnavailable, 503),
]


async def on_library_error(request: Request, exc: Exception) -> Response:
    """ow-es errors carry a message written for people: pass it on, with its status."""
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            return error_response(status, str(exc))
    log.error("request %s %s failed: %s", request.method, request.url.path, exc)
    return error_response(500, str(exc) if isinstance(exc, OwEsError) else "internal error")


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """Never a stack trace in a response: it goes to the log."""
    log.exception("request %s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")
