"""The limits in force on PostgreSQL (see ``limits_port.FlowControl``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ow_es.limits import Limits, StoredLimits
from ow_es.store.flow import Usage
from ow_es.store.limits_port import ReadyGroup, row_values, stored_from_row, usage_from_rows
from ow_es.store.named_queries import load
from ow_es.store.postgres.transaction import usage_params

if TYPE_CHECKING:
    from ow_es.store.postgres.store import PostgresStore

Q = load("postgres")


class PostgresLimits:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def stored(self) -> list[StoredLimits]:
        rows = await self._store.fetch(Q["list_limits"], {}, "listing limits")
        return [stored_from_row(row, row["updated_at"]) for row in rows]

    async def get(self, workflow_name: str) -> StoredLimits | None:
        rows = await self._store.fetch(Q["get_limits"], {"name": workflow_name}, "reading limits")
        return stored_from_row(rows[0], rows[0]["updated_at"]) if rows else None

    async def set(self, workflow_name: str, limits: Limits, source: str) -> None:
        params = {**row_values(workflow_name, limits, source), "only_code": False}
        await self._store.fetch(Q["put_limits"], params, "storing limits")

    async def declare(self, declared: dict[str, Limits]) -> None:
        for name, limits in sorted(declared.items()):
            if limits.is_empty:
                params = {"name": name, "only_code": True}
                await self._store.fetch(Q["clear_limits"], params, "clearing limits")
            else:
                params = {**row_values(name, limits, "code"), "only_code": True}
                await self._store.fetch(Q["put_limits"], params, "storing limits")

    async def clear(self, workflow_name: str) -> bool:
        params = {"name": workflow_name, "only_code": False}
        return bool(await self._store.fetch(Q["clear_limits"], params, "clearing limits"))

    async def usage(self, names: Sequence[str], keys: Sequence[tuple[str, str]]) -> Usage:
        rows = await self._store.fetch(Q["flow_usage"], usage_params(names, keys), "counting")
        return usage_from_rows(rows)

    async def ready_groups(self) -> list[ReadyGroup]:
        rows = await self._store.fetch(Q["ready_groups"], {}, "counting ready runs")
        return [ReadyGroup(**row) for row in rows]
