"""The port of ``reproject``: what an adapter provides so that the orchestration in
``ow_es.reproject`` can rebuild the projections from the log."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ow_es.errors import OwEsError
from ow_es.models import StepAttempt, WorkflowRun
from ow_es.projections import Recorded
from ow_es.store.tables import RUNS, STEPS

RunKey = tuple[str, str]
# The projection tables, their keys and the columns a verify compares (the coordination column
# lease_until is left out: heartbeats move it in place).
TABLES: dict[str, tuple[str, ...]] = {RUNS.name: RUNS.key, STEPS.name: STEPS.key}
COMPARED: dict[str, list[str]] = {
    RUNS.name: [c for c in RUNS.names if c != "lease_until"],
    STEPS.name: list(STEPS.names),
}


class GateBusy(OwEsError):
    """The exclusive append gate was not granted within its lock timeout."""


class RebuildTx(Protocol):
    async def read(self, cursor: str, limit: int, *, barrier: bool) -> tuple[list[Recorded], str]:
        """Log events after ``cursor`` in log order (all namespaces) and the next cursor."""
        ...

    async def load_runs(self, keys: list[RunKey]) -> dict[RunKey, WorkflowRun]:
        """Rows already in the shadow table."""
        ...

    async def write(self, runs: list[WorkflowRun], steps: list[StepAttempt], cursor: str) -> None:
        """Upsert shadow rows and save the checkpoint."""
        ...


class GateTx(RebuildTx, Protocol):
    async def swap(self) -> None:
        """Carry live leases over, then swap shadow and live tables."""
        ...


class Frozen(Protocol):
    """The append gate held across transactions, for a consistent verify."""

    def batch(self) -> AbstractAsyncContextManager[RebuildTx]:
        """A transaction whose writes commit while the gate stays held."""
        ...

    released_at: float | None  # loop time when appends could go on again

    async def diff_after_release(self) -> list[Difference]:
        """Fix a snapshot, let appends go on, then compare shadow and live tables in it."""
        ...


class Rebuilder(Protocol):
    async def counts(self) -> dict[str, int]: ...

    async def start(self) -> tuple[str, bool]:
        """Create the shadow tables, or find an interrupted rebuild: (cursor, resumed)."""
        ...

    async def read(self, cursor: str, limit: int) -> tuple[list[Recorded], str]:
        """Like ``RebuildTx.read`` behind the barrier, on a connection of its own."""
        ...

    def batch(self) -> AbstractAsyncContextManager[RebuildTx]: ...

    def gate(self, lock_timeout: float) -> AbstractAsyncContextManager[GateTx]: ...

    def frozen(self, lock_timeout: float) -> AbstractAsyncContextManager[Frozen]: ...

    async def build_indexes(self) -> None: ...

    async def discard(self) -> None: ...


@dataclass
class Difference:
    table: str
    key: tuple[Any, ...]
    columns: list[str]

    def describe(self) -> str:
        where = "/".join(str(part) for part in self.key)
        return f"{self.table} {where}: {', '.join(self.columns)} differ"
