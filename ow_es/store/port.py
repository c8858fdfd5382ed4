"""The store port: the handful of operations everything above the database uses.

Adapters (``postgres.py``, ``sqlite.py``) translate driver errors into ow-es errors, so nothing
above this layer imports psycopg or sqlite3.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec

from ow_es.events import EventData
from ow_es.models import Event, RunPage, StepAttempt, WorkflowRun

if TYPE_CHECKING:
    from ow_es.reproject import Rebuilder
    from ow_es.store.tx import Transaction

T = TypeVar("T")
WorkflowKey = tuple[str, str | None]  # (name, version) a worker serves


class AppendRequest(msgspec.Struct, kw_only=True):
    """Events for one run. A ``RunCreated`` first event creates the run.

    ``claim_token`` fences the append: it is accepted only while the run is ``running`` under
    that claim. ``expected_seq`` additionally requires that nothing else was appended since.
    ``known``: the run's row as the writer last saw it, a hint an adapter may use to skip
    reading the row (it must still check that the row is unchanged).
    """

    run_id: str
    events: list[EventData]
    claim_token: str | None = None
    expected_seq: int | None = None
    known: WorkflowRun | None = None


class Appended(msgspec.Struct, kw_only=True):
    """An accepted append: the run's row afterwards. ``created`` is False for an existing
    run returned by idempotency key (nothing was written then)."""

    run: WorkflowRun
    created: bool = False
    first_seq: int = 0


Outcome = Appended | Exception


class LogBatch(msgspec.Struct, kw_only=True):
    """Events read from the log after a checkpoint, and the checkpoint to resume from."""

    events: list[Event]
    cursor: str | None


class Store(Protocol):
    """One database, one namespace."""

    namespace: str
    backend: str

    async def open(self, *, migrate: bool = True) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        """Apply pending migrations (or only name them); returns their names."""
        ...

    async def schema_version(self) -> int: ...

    async def run(self, what: str, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``fn`` in one write transaction (retried from the start after a deadlock)."""
        ...

    async def append(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        """Append all requests in one transaction; each gets its own outcome (an accepted
        ``Appended``, or the ``ConcurrencyError``/``RunNotFound``/``InvalidTransition`` that
        rejected it without affecting the others)."""
        ...

    async def claim(
        self,
        worker_id: str,
        workflows: Sequence[WorkflowKey],
        limit: int,
        lease_seconds: float,
    ) -> list[WorkflowRun]:
        """Claim up to ``limit`` ready runs of ``workflows``; ready runs past their deadline
        are failed instead (and not returned)."""
        ...

    async def heartbeat(self, claims: dict[str, str], lease_seconds: float) -> set[str]:
        """Extend the leases of ``{run_id: claim_token}``; returns the run ids still held."""
        ...

    async def next_wake_at(self, workflows: Sequence[WorkflowKey]) -> datetime | None:
        """The earliest future ``available_at`` or lease expiry among ``workflows``' runs."""
        ...

    async def get_run(self, run_id: str) -> WorkflowRun | None: ...

    async def list_runs(
        self,
        *,
        status: str | None,
        workflow_name: str | None,
        limit: int,
        cursor: str | None,
    ) -> RunPage: ...

    async def list_children(self, run_id: str) -> list[WorkflowRun]: ...

    async def step_attempts(self, run_id: str) -> list[StepAttempt]: ...

    async def read_run_events(self, run_id: str) -> list[Event]: ...

    async def read_log(self, after: str | None, limit: int, *, barrier: bool = True) -> LogBatch:
        """Events committed after checkpoint ``after`` (None: from the start), never passing
        over one that may still commit below it. ``barrier=False`` drops that guard; only for
        readers that know no append is in flight (under the reproject gate, a quiet test)."""
        ...

    async def log_lag(self) -> float:
        """Seconds the log readers' barrier may be held back (the oldest open transaction)."""
        ...

    async def count_runs(self) -> dict[tuple[str, str], int]:
        """Runs by (workflow name, status)."""
        ...

    def rebuilder(self) -> Rebuilder:
        """The backend half of ``reproject``."""
        ...

    def wake_channel(self) -> WakeChannel: ...


class WakeChannel(Protocol):
    """Wake-ups: 'a run may be ready' and 'run X finished'."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a ready-run notification; True if one came."""
        ...

    def subscribe_done(self, run_id: str) -> DoneWaiter: ...


class DoneWaiter(Protocol):
    async def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...
