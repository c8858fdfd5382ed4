"""A worker's side of its lane (``store.wake.Lane``): the wake-ups sent to it alone.

A run made ready is told to one worker only (PostgreSQL, ``store/postgres/lanes.py``), so that
worker must not sit on it: when a lane wake-up finds it with every slot busy, or the claim it
caused fills every slot (it may not have taken that run), it passes the wake-up on to every
worker. A claim that left a slot free saw every run notified before it was sent: those
wake-ups are answered.
"""

from __future__ import annotations

from ow_es.store.wake import Lane


class LaneWakes:
    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self._answered = lane.signal.generation

    @property
    def seen(self) -> int:
        """The lane's wake-ups so far: taken just before a claim is sent."""
        return self.lane.signal.generation

    def after_round(self, *, claimed_from: int | None, full: bool) -> None:
        """After a round of the claim loop: ``claimed_from``, the lane's count before its claim
        (None: no claim, or it failed); ``full``: every slot is now busy."""
        if full:
            if self.lane.signal.generation != self._answered:
                self._answered = self.lane.signal.generation
                self.lane.rebroadcast()
        elif claimed_from is not None:
            self._answered = max(self._answered, claimed_from)

    def offered(self, woke: set[str]) -> str | None:
        """The run to claim by its id: named by the only wake-up since the last round, when
        nothing else woke the worker (no timer due, no slot freed). Called every round."""
        named = self.lane.take_offered()
        return named if woke == {"ready"} else None

    async def wait(self, timeout: float) -> bool:
        """While full: True at a lane wake-up not yet answered (the next round passes it on),
        False after ``timeout``."""
        if self.lane.signal.generation == self._answered:
            await self.lane.signal.changed(timeout)
        return self.lane.signal.generation != self._answered

    def close(self) -> None:
        """The worker stops claiming: pass on what is unanswered, and all that comes later."""
        if self.lane.signal.generation != self._answered:
            self.lane.rebroadcast()
        self.lane.close()
