"""In-process wake-up bookkeeping shared by both backends' wake channels."""

from __future__ import annotations

import asyncio
import contextlib


class DoneWaiters:
    """Run id -> the events of the callers waiting for that run to finish."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def subscribe(self, run_id: str) -> Waiter:
        event = asyncio.Event()
        self._waiters.setdefault(run_id, set()).add(event)
        return Waiter(self, run_id, event)

    def discard(self, run_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(run_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[run_id]

    def notify(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            for event in self._waiters.get(run_id, ()):
                event.set()

    def notify_all(self) -> None:
        """After a lost connection: every waiter re-reads its run."""
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()


class Waiter:
    def __init__(self, owner: DoneWaiters, run_id: str, event: asyncio.Event) -> None:
        self._owner = owner
        self.run_id = run_id
        self._event = event

    async def wait(self, timeout: float) -> bool:
        """True when woken (the run may have finished), False on timeout."""
        return await _consume(self._event, timeout)

    def close(self) -> None:
        self._owner.discard(self.run_id, self._event)


class ReadySignal:
    """'A run may be ready': wakes every waiting worker loop of this process."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        return await _consume(self._event, timeout)


async def _consume(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``event``; True if it was set. Clears it for the next wait."""
    if not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
    woken = event.is_set()
    event.clear()
    return woken
