"""A short-lived, single-flight cache of the run counts.

Counting runs by workflow and status visits every entry of the namespace in an index
(``workflow_runs_counts``, an index-only scan), so the overview of many open tabs and
Prometheus scrapes share one count per ``COUNTS_TTL`` seconds instead of each running its own.
"""

from __future__ import annotations

import asyncio
import time

from ow_es.client import OpenWorkflow

COUNTS_TTL = 2.0


class CountsCache:
    def __init__(self, ttl: float = COUNTS_TTL) -> None:
        self.ttl = ttl
        self._value: dict[tuple[str, str], int] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, client: OpenWorkflow) -> dict[tuple[str, str], int]:
        async with self._lock:  # one count at a time; those waiting get its result
            if self._value is None or time.monotonic() - self._at > self.ttl:
                self._value = await client.store.count_runs()
                self._at = time.monotonic()
            return self._value

    def invalidate(self) -> None:
        """After a change made through the dashboard: the next read counts again."""
        self._value = None
