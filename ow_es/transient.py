"""Trying again while the database is briefly unavailable: a dropped connection, a restart,
a failover. Bounded in time, with backoff; only for failures that are safe to repeat."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ow_es.errors import SchemaMismatch, StoreUnavailable

T = TypeVar("T")
log = logging.getLogger("ow_es.store")


def unavailable(exc: StoreUnavailable) -> bool:
    """Any connection failure, but not a schema that is newer than this ow-es."""
    return not isinstance(exc, SchemaMismatch)


async def retrying(
    what: str,
    op: Callable[[], Awaitable[T]],
    *,
    seconds: float,
    safe: Callable[[StoreUnavailable], bool] = unavailable,
    on_failure: Callable[[], None] | None = None,
) -> T:
    """``op()``, again after each ``StoreUnavailable`` that ``safe`` accepts, with a backoff
    from 50 ms to 1 s, for up to ``seconds``; then the last failure is raised."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    delay = 0.05
    while True:
        try:
            return await op()
        except StoreUnavailable as exc:
            if not safe(exc) or loop.time() + delay > give_up:
                raise
            log.info("%s failed (%s); trying again", what, exc)
            if on_failure is not None:
                on_failure()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
