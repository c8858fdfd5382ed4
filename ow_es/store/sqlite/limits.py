"""The limits in force on SQLite (see ``limits_port.FlowControl``); times are the local
clock's, as everywhere in this adapter."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ow_es.limits import Limits, StoredLimits
from ow_es.store.flow import Usage
from ow_es.store.limits_port import ReadyGroup, row_values, stored_from_row, usage_from_rows
from ow_es.store.named_queries import load
from ow_es.store.sqlite.transaction import ts, usage_params

if TYPE_CHECKING:
    from ow_es.store.sqlite.store import SqliteStore

Q = load("sqlite")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _stored(row: dict[str, Any]) -> StoredLimits:
    return stored_from_row(row, datetime.fromisoformat(row["updated_at"]))


class SqliteLimits:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def _params(self, **params: Any) -> dict[str, Any]:
        return {"ns": self._store.namespace, "now": ts(datetime.now(UTC)), **params}

    async def stored(self) -> list[StoredLimits]:
        return [_stored(row) for row in await self._store.fetch(Q["list_limits"], self._params())]

    async def get(self, workflow_name: str) -> StoredLimits | None:
        rows = await self._store.fetch(Q["get_limits"], self._params(name=workflow_name))
        return _stored(rows[0]) if rows else None

    async def set(self, workflow_name: str, limits: Limits, source: str) -> None:
        params = self._params(**row_values(workflow_name, limits, source), only_code=False)
        async with self._store.write_tx("storing limits") as conn:
            await conn.execute(Q["put_limits"], params)

    async def declare(self, declared: dict[str, Limits]) -> None:
        async with self._store.write_tx("storing limits") as conn:
            for name, limits in sorted(declared.items()):
                if limits.is_empty:
                    params = self._params(name=name, only_code=True)
                    await conn.execute_fetchall(Q["clear_limits"], params)
                else:
                    values = row_values(name, limits, "code")
                    await conn.execute(Q["put_limits"], self._params(**values, only_code=True))

    async def clear(self, workflow_name: str) -> bool:
        async with self._store.write_tx("clearing limits") as conn:
            params = self._params(name=workflow_name, only_code=False)
            return bool(await conn.execute_fetchall(Q["clear_limits"], params))

    async def usage(self, names: Sequence[str], keys: Sequence[tuple[str, str]]) -> Usage:
        params = usage_params(self._store.namespace, datetime.now(UTC), names, keys)
        return usage_from_rows(await self._store.fetch(Q["flow_usage"], params), _time)

    async def ready_groups(self) -> list[ReadyGroup]:
        rows = await self._store.fetch(Q["ready_groups"], self._params())
        return [ReadyGroup(**{**row, "fresh": bool(row["fresh"])}) for row in rows]
