"""Storage: the port (``port``), the rules of writing (``rules``) over it, and the PostgreSQL
and SQLite adapters (``postgres/``, ``sqlite/``)."""

from __future__ import annotations

from ow_es.config import Settings
from ow_es.store.port import Appended, AppendRequest, LogBatch, Outcome, SignalSend, WakeChannel
from ow_es.store.store import Store

__all__ = [
    "AppendRequest",
    "Appended",
    "LogBatch",
    "Outcome",
    "SignalSend",
    "Store",
    "WakeChannel",
    "make_store",
]


def make_store(settings: Settings, *, pool_size: int = 10, retry_seconds: float = 10.0) -> Store:
    """An unopened store for ``settings``."""
    if settings.backend == "sqlite":
        from ow_es.store.sqlite.store import SqliteStore

        assert settings.sqlite_path is not None
        return Store(SqliteStore(settings.sqlite_path, settings.namespace))
    from ow_es.store.postgres.store import PostgresStore

    return Store(
        PostgresStore(
            settings.url,
            settings.namespace,
            settings.schema,
            pool_size=pool_size,
            retry_seconds=retry_seconds,
        )
    )
