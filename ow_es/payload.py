"""User values to and from JSON: inputs, step results, outputs, signal data (msgspec), and the
names users give (workflows, steps, signals, keys).

Everything is checked before it reaches a write, identically on both backends: what one
database would refuse (a NUL character in PostgreSQL) or change (NaN stored as null) is
refused up front with a ``ValidationError`` naming the field.
"""

from __future__ import annotations

import math
import re
import traceback
from typing import Any

import msgspec

from ow_es.errors import ValidationError

MAX_NAME_LENGTH = 1000  # workflow and step names, idempotency keys, signal names
# A JSON \u0000 escape not itself escaped: a NUL character inside a string.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def check_name(value: Any, what: str) -> str:
    """A name as ow-es stores it: a non-empty string of at most ``MAX_NAME_LENGTH``
    characters, valid Unicode, no NUL."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what} must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise ValidationError(
            f"{what} is {len(value)} characters long; at most {MAX_NAME_LENGTH} are allowed"
        )
    if "\x00" in value:
        raise ValidationError(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} contains a lone surrogate (not valid Unicode)") from None
    return value


def check_priority(value: Any) -> int:
    """A run's priority: an integer the database's ``integer`` column holds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"priority must be an integer, got {value!r}")
    if not -(2**31) <= value < 2**31:
        raise ValidationError(f"priority {value} is out of range (a 32-bit integer)")
    return value


def to_json_value(value: Any, what: str, limit: int, schema: Any = Any) -> Any:
    """Encode ``value`` as JSON, enforce the payload limit and the schema, and return the
    plain JSON value (what is stored, and what replay will see)."""
    try:
        raw = msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError, OverflowError, UnicodeEncodeError) as exc:
        raise ValidationError(f"{what} cannot be encoded as JSON: {exc}") from None
    except RecursionError:
        raise ValidationError(f"{what} is nested too deeply to encode as JSON") from None
    if _NUL_ESCAPE.search(raw):
        raise ValidationError(f"{what} contains a NUL character (\\u0000) in a string")
    if b"null" in raw and _has_non_finite(value):  # msgspec writes NaN and infinity as null
        raise ValidationError(f"{what} contains NaN or infinity, which JSON cannot hold")
    if len(raw) > limit:
        raise ValidationError(
            f"{what} is {len(raw)} bytes, over the payload limit of {limit} bytes"
        )
    if schema is not Any:
        try:
            msgspec.json.decode(raw, type=schema)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"{what} is invalid: {exc}") from None
    try:
        return msgspec.json.decode(raw)
    except RecursionError:
        raise ValidationError(f"{what} is nested too deeply to decode as JSON") from None


def _has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif isinstance(item, msgspec.Struct):
            stack.extend(msgspec.structs.astuple(item))
        elif hasattr(item, "__dataclass_fields__"):
            stack.extend(getattr(item, f) for f in item.__dataclass_fields__)
    return False


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
