"""sqlite3 errors classified once: what a failure of SQLite means to ow-es."""

from __future__ import annotations

import sqlite3

from ow_es.errors import OwEsError
from ow_es.store.failure import Kind, failure

# Refused data (a constraint, a value too big): sending it again fails again.
_INVALID = (sqlite3.IntegrityError, sqlite3.DataError)


def kind_of(exc: sqlite3.Error) -> Kind:
    if isinstance(exc, _INVALID):
        return "invalid"
    if isinstance(exc, sqlite3.OperationalError):
        return "unavailable"  # locked past the busy timeout, I/O error, file gone
    return "other"


def translate(exc: sqlite3.Error, what: str) -> OwEsError:
    return failure(kind_of(exc), "SQLite", what, exc)
