"""The limits in force (the ``run_limits`` table) and what they hold back: the part of the
port that flow control needs outside the claim (the claim itself goes through
``Primitives.select_ready``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import msgspec

from ow_es.limits import Limits, StoredLimits
from ow_es.store.flow import Count, Usage


class ReadyGroup(msgspec.Struct, kw_only=True, frozen=True):
    """Ready, unclaimed runs of a limited workflow with one key (None: no key); ``fresh``:
    never claimed before (only those count against a rate)."""

    workflow_name: str
    key: str | None
    fresh: bool
    count: int


class FlowControl(Protocol):
    async def stored(self) -> list[StoredLimits]: ...

    async def get(self, workflow_name: str) -> StoredLimits | None: ...

    async def set(self, workflow_name: str, limits: Limits, source: str) -> None:
        """Store the limits of a workflow (replacing what was stored)."""
        ...

    async def declare(self, declared: dict[str, Limits]) -> None:
        """A worker's limits from code: stored where none are, or where code stored them
        before; an operator's stay."""
        ...

    async def clear(self, workflow_name: str) -> bool:
        """Remove a workflow's stored limits; False when there were none."""
        ...

    async def usage(self, names: Sequence[str], keys: Sequence[tuple[str, str]]) -> Usage:
        """As ``Primitives.flow_usage``, outside a write transaction."""
        ...

    async def ready_groups(self) -> list[ReadyGroup]:
        """Ready, unclaimed runs of the workflows that have stored limits, grouped."""
        ...


def row_values(workflow_name: str, limits: Limits, source: str) -> dict[str, Any]:
    """The ``run_limits`` columns of a workflow's limits."""
    rate = limits.rate_limit
    per_key_rate = limits.per_key_rate_limit
    return {
        "name": workflow_name,
        "concurrency": limits.concurrency,
        "per_key": limits.per_key,
        "rate": limits.rate,
        "rate_count": rate.count if rate else None,
        "rate_seconds": rate.seconds if rate else None,
        "per_key_rate": limits.per_key_rate,
        "per_key_rate_count": per_key_rate.count if per_key_rate else None,
        "per_key_rate_seconds": per_key_rate.seconds if per_key_rate else None,
        "source": source,
    }


def limits_from_row(row: dict[str, Any]) -> Limits:
    return Limits(
        concurrency=row["concurrency"],
        per_key=row["per_key"],
        rate=row["rate"],
        per_key_rate=row["per_key_rate"],
    )


def stored_from_row(row: dict[str, Any], updated_at: datetime) -> StoredLimits:
    return StoredLimits(
        workflow_name=row["workflow_name"],
        limits=limits_from_row(row),
        source=row["source"],
        updated_at=updated_at,
    )


def usage_from_rows(rows: Sequence[dict[str, Any]], parse_time: Any = None) -> Usage:
    """``flow_usage`` rows (workflow_name, key, held, started, oldest_start) as a Usage."""
    usage = Usage()
    for row in rows:
        oldest = row["oldest_start"]
        if oldest is not None and parse_time is not None:
            oldest = parse_time(oldest)
        count = Count(held=int(row["held"]), started=int(row["started"] or 0), oldest_start=oldest)
        if row["key"] is None:
            usage.workflows[row["workflow_name"]] = count
        else:
            usage.keys[(row["workflow_name"], row["key"])] = count
    return usage
