"""In-process wake-up bookkeeping shared by both backends' wake channels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


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
    """'A run may be ready', broadcast: every waiter of this process (each worker loop, each
    dashboard stream) sees every signal, including one that came while it was busy."""

    def __init__(self) -> None:
        self.generation = 0
        self._event = asyncio.Event()

    def set(self) -> None:
        self.generation += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    def waiter(self) -> ReadyWaiter:
        return ReadyWaiter(self)

    async def changed(self, timeout: float) -> None:
        """Return at the next signal, or after ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()


class ReadyWaiter:
    """One waiter's view of a ``ReadySignal``: what it has already seen."""

    def __init__(self, signal: ReadySignal) -> None:
        self._signal = signal
        self._seen = signal.generation

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a signal this waiter has not seen; True if one
        came (also one that came since its last wait)."""
        if self._signal.generation == self._seen:
            await self._signal.changed(timeout)
        woken = self._signal.generation != self._seen
        self._seen = self._signal.generation
        return woken


class Lane:
    """A worker's own wake-up channel (PostgreSQL): a transaction that makes one run ready
    tells one live worker that serves it, chosen when it commits, instead of every worker.

    ``name`` is what the worker records in the registry (None: no lane, as on SQLite, where
    every wake-up is for everyone); ``signal`` counts the wake-ups that came on it (each also
    wakes every waiter of the process). A worker with no free slot passes a wake-up on to every
    worker (``rebroadcast``); once closed, the listener passes on the ones still sent to it.

    A wake-up on the lane names its run (``offer``); one that came to every worker names none.
    The worker claims a run named alone by its id (``take_offered``)."""

    def __init__(
        self,
        name: str | None,
        rebroadcast: Callable[[], None] = lambda: None,
        close: Callable[[Lane], None] = lambda lane: None,
    ) -> None:
        self.name = name
        self.signal = ReadySignal()
        self._rebroadcast = rebroadcast
        self._close = close
        self._named: str | None = None  # the run of the only wake-up since the last take
        self._unnamed = True  # until the first take: the first claim looks at everything

    def offer(self, run_id: str | None) -> None:
        """A wake-up that came: for ``run_id``, or (None, "") for whatever may be ready."""
        if run_id and self._named is None and not self._unnamed:
            self._named = run_id
        else:  # none named, or more than one wake-up: the claim looks at everything
            self._named, self._unnamed = None, True

    def take_offered(self) -> str | None:
        """The run named by the only wake-up since the last take, if it named one; and start
        again."""
        named, self._named, self._unnamed = self._named, None, False
        return named

    def rebroadcast(self) -> None:
        """Wake every worker (sent in the background)."""
        self._rebroadcast()

    def close(self) -> None:
        self._close(self)


async def _consume(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``event``; True if it was set. Clears it for the next wait."""
    if not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
    woken = event.is_set()
    event.clear()
    return woken
