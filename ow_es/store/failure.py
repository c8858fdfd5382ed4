"""The ow-es error a driver error becomes, worded the same on both backends.

Each adapter classifies its driver's errors once (``postgres/errors.py``, ``sqlite/errors.py``)
into one of these kinds. Only a lost or refused connection leaves a write's outcome unknown;
data the database refuses (an encoding, a size limit, a constraint) is a permanent
``ValidationError``: sending it again would fail again.
"""

from __future__ import annotations

from typing import Literal

from ow_es.errors import OwEsError, StoreUnavailable, ValidationError

Kind = Literal["unavailable", "invalid", "other"]


def failure(kind: Kind, backend: str, what: str, detail: BaseException) -> OwEsError:
    text = first_line(detail)
    if kind == "unavailable":
        return StoreUnavailable(f"{backend} unavailable while {what}: {text}")
    if kind == "invalid":
        return ValidationError(f"{backend} refused the data while {what}: {text}")
    return OwEsError(f"{backend} error while {what}: {text}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
