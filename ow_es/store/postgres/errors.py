"""psycopg errors classified once: what a failure of PostgreSQL means to ow-es."""

from __future__ import annotations

import psycopg
from psycopg import errors

from ow_es.errors import OwEsError
from ow_es.store.failure import Kind, failure

# Lost a deadlock or a serialization check: the transaction is run again from the start.
RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)
# Refused data, by SQLSTATE class: data exceptions (22), integrity constraints (23), program
# limits such as an index row or a nesting too large (54). Sending it again fails again.
_INVALID_CLASSES = ("22", "23", "54")


def kind_of(exc: psycopg.Error) -> Kind:
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError) or (
        exc.sqlstate is not None and exc.sqlstate[:2] in _INVALID_CLASSES
    ):
        return "invalid"
    if isinstance(exc, RETRYABLE):
        return "other"  # rolled back by a conflict: never an unknown outcome
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return "unavailable"  # connection lost or refused, server shutting down, pool timeout
    return "other"


def translate(exc: psycopg.Error, what: str) -> OwEsError:
    return failure(kind_of(exc), "PostgreSQL", what, exc)
