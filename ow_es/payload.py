"""User values to and from JSON: inputs, step results, outputs, signal data (msgspec)."""

from __future__ import annotations

import traceback
from typing import Any

import msgspec

from ow_es.errors import ValidationError


def to_json_value(value: Any, what: str, limit: int, schema: Any = Any) -> Any:
    """Encode ``value`` as JSON, enforce the payload limit and the schema, and return the
    plain JSON value (what is stored, and what replay will see)."""
    try:
        raw = msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise ValidationError(f"{what} cannot be encoded as JSON: {exc}") from None
    if len(raw) > limit:
        raise ValidationError(
            f"{what} is {len(raw)} bytes, over the payload limit of {limit} bytes"
        )
    if schema is not Any:
        try:
            msgspec.json.decode(raw, type=schema)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"{what} is invalid: {exc}") from None
    return msgspec.json.decode(raw)


def from_json_value(value: Any, schema: Any, what: str) -> Any:
    """A stored JSON value as ``schema`` (a Struct, dataclass, TypedDict or plain type)."""
    if schema is Any:
        return value
    try:
        return msgspec.convert(value, schema, strict=False)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{what} is invalid: {exc}") from None


def error_info(exc: BaseException) -> dict[str, Any]:
    """What the log keeps of an exception: its type, message and traceback."""
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
