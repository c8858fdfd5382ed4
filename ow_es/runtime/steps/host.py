"""What a step kind may use of the run it executes in: the narrow interface between the
executor and the step kinds. Steps read through it and write only through ``append``; they
never change the executor's state directly."""

from __future__ import annotations

from collections.abc import Awaitable
from concurrent.futures import Executor
from typing import Protocol, TypeVar

from ow_es import events as ev
from ow_es.models import WorkflowRun
from ow_es.runtime.history import History
from ow_es.runtime.unwind import Park
from ow_es.store import Appended, AppendRequest, SignalSend

T = TypeVar("T")


class StepHost(Protocol):
    @property
    def run(self) -> WorkflowRun:
        """The run's row as claimed."""
        ...

    @property
    def history(self) -> History:
        """What the run's events say about its steps."""
        ...

    @property
    def worker_id(self) -> str: ...

    @property
    def max_payload_bytes(self) -> int: ...

    @property
    def max_suspensions(self) -> int:
        """How often one step may suspend with ``RetryAfter`` before it counts as a failure."""
        ...

    @property
    def threads(self) -> Executor:
        """Where sync step functions run."""
        ...

    def unique_name(self, name: str) -> str:
        """The step's name, with ':1', ':2'... for repeats in call order."""
        ...

    def check_active(self) -> None:
        """Raises once the run is parking: no new step starts then."""
        ...

    def parking(self, park: Park) -> Park:
        """Note that the run parks (sleep, wait, retry); the executor records the earliest."""
        ...

    async def hold(self, park: Park) -> bool:
        """Park, but keep the workflow function suspended here until this worker's next claim
        of the run (``runtime/held.py``); False where it must unwind (raise the park) instead.
        Raises the park when the worker lets the function go."""
        ...

    def begin_attempt(self, name: str, attempt: int) -> None:
        """Count a new attempt of a function step; raises ``StepLimitExceeded`` (and the run
        fails once its steps settle) when the run has made all it may."""
        ...

    async def tracked(self, work: Awaitable[T]) -> T:
        """Await ``work`` as a step in flight (the run ends only after it settles)."""
        ...

    async def ensure_lease(self) -> None:
        """Before user code runs: make sure the run is still ours."""
        ...

    async def append(
        self,
        events: list[ev.EventData],
        *,
        expect: bool = False,
        child: AppendRequest | None = None,
        signal: SignalSend | None = None,
    ) -> Appended:
        """Write through the run's one submit path."""
        ...


__all__ = ["StepHost"]
