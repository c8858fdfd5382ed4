"""psycopg errors classified once: what a failure of PostgreSQL means to ow-es."""

from __future__ import annotations

import psycopg
from psycopg import errors

from ow_es.errors import OwEsError
from ow_es.store.failure import Kind, failure

# Lost a deadlock or a serialization check: the transaction is run again from the start.
RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)
# Refused data: sending it again fails again.
_INVALID = (psycopg.DataError, psycopg.IntegrityError, errors.ProgramLimitExceeded)


def kind_of(exc: psycopg.Error) -> Kind:
    if isinstance(exc, _INVALID):
        return "invalid"
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return "unavailable"  # connection lost or refused, server shutting down, pool timeout
    return "other"


def translate(exc: psycopg.Error, what: str) -> OwEsError:
    return failure(kind_of(exc), "PostgreSQL", what, exc)
