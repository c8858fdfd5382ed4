"""Wake-ups on SQLite: only within this process (client and worker sharing it); workers and
waiters in other processes poll."""

from __future__ import annotations

import os
from typing import ClassVar

from ow_es.store.wake import DoneWaiters, Lane, ReadySignal, ReadyWaiter, Waiter


class SqliteWakeChannel:
    pushes = False  # other processes are not told: waiters poll too

    registry: ClassVar[dict[str, SqliteWakeChannel]] = {}

    def __init__(self) -> None:
        self.ready = ReadySignal()
        self.done = DoneWaiters()

    @classmethod
    def for_path(cls, path: str) -> SqliteWakeChannel:
        """One channel per database file and process."""
        key = path if path == ":memory:" else os.path.abspath(path)
        return cls.registry.setdefault(key, cls())

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def ready_waiter(self) -> ReadyWaiter:
        return self.ready.waiter()

    def subscribe_done(self, run_id: str) -> Waiter:
        return self.done.subscribe(run_id)

    async def open_lane(self, worker_id: str) -> Lane:
        return Lane(None)  # no lanes: every wake-up is for every waiter of the process
