"""The wake-up part of the store port: 'a run may be ready' and 'run X finished'."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ow_es.store.wake import Lane


class WakeChannel(Protocol):
    """Wake-ups: 'a run may be ready' and 'run X finished'."""

    # True when wake-ups come from other processes too (LISTEN/NOTIFY); False when only
    # from this process, so waiters must also poll.
    pushes: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready_waiter(self) -> ReadyWaiter:
        """A waiter for 'a run may be ready' notifications; every waiter sees every one."""
        ...

    def subscribe_done(self, run_id: str) -> DoneWaiter: ...

    async def open_lane(self, worker_id: str) -> Lane:
        """Listen on this worker's own channel (see ``wake.Lane``) before it is recorded in
        the registry, so no wake-up sent to it is lost; a lane named None where there are
        none (SQLite)."""
        ...


class DoneWaiter(Protocol):
    async def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


class ReadyWaiter(Protocol):
    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification this waiter has not seen."""
        ...
