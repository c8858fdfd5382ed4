"""Waiting in tests: poll a condition until it holds, with a timeout. Tests never sleep for
long; they wait for what they need with this one helper."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def eventually(
    check: Callable[[], Any], timeout: float = 10, message: str = "", *, interval: float = 0.02
) -> Any:
    """Call ``check()`` (sync or async) until it returns something truthy, and return that.
    After ``timeout`` seconds the test fails (an ``AssertionError`` naming ``message``)."""
    try:
        async with asyncio.timeout(timeout) as scope:
            while True:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        if scope.expired():
            raise AssertionError(f"timed out after {timeout}s: {message or check}") from None
        raise
