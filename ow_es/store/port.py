"""The store port: what an adapter (PostgreSQL, SQLite) provides, and the requests and
outcomes that cross it.

Everything above this layer reaches the database through :class:`ow_es.store.rules.Store`,
which applies the rules and drives an :class:`Adapter` through these protocols. Adapters
translate driver errors into ow-es errors, so nothing above them imports psycopg or sqlite3.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from ow_es.events import EventData
from ow_es.models import Event, RunPage, StepAttempt, WorkflowRun
from ow_es.store.wake_port import WakeChannel as WakeChannel  # its home is wake_port

if TYPE_CHECKING:
    from ow_es.limits import Limits
    from ow_es.store.flow import Usage
    from ow_es.store.limits_port import FlowControl
    from ow_es.store.plan import Plan
    from ow_es.store.rebuild_port import Rebuilder
    from ow_es.store.registry_port import WorkerRegistry
    from ow_es.store.retention_port import Retention
    from ow_es.store.schedules_port import Schedules
    from ow_es.store.tables import TxTime

T = TypeVar("T")
WorkflowKey = tuple[str, str | None]  # (name, version) a worker serves


class SignalSend(msgspec.Struct, kw_only=True):
    """A signal a run's step sends: delivered in the same transaction as the step's record."""

    signal_name: str
    data: Any
    step_name: str


class AppendRequest(msgspec.Struct, kw_only=True):
    """Events for one run. A ``RunCreated`` first event creates the run.

    ``claim_token`` fences the append: it is accepted only while the run is ``running`` under
    that claim. ``expected_seq`` additionally requires that nothing else was appended since.
    ``known``: the run's row as the writer last saw it, which lets the rules plan the append
    without reading the row (the write still checks that the row is unchanged).
    ``child``: a child run created in the same transaction, before these events.
    ``signal``: a signal delivered in the same transaction; its ``SignalSent`` event (with the
    runs it reached) is appended after these events.
    """

    run_id: str
    events: list[EventData]
    claim_token: str | None = None
    expected_seq: int | None = None
    known: WorkflowRun | None = None
    child: AppendRequest | None = None
    signal: SignalSend | None = None

    @property
    def compound(self) -> bool:
        """Writes another run too: it gets a transaction of its own."""
        return self.child is not None or self.signal is not None


class Appended(msgspec.Struct, kw_only=True):
    """An accepted append: the run's row afterwards. ``created`` is False for an existing
    run returned by idempotency key (nothing was written then). ``child`` and ``delivered``
    report a compound request's other writes."""

    run: WorkflowRun
    created: bool = False
    first_seq: int = 0
    child: WorkflowRun | None = None
    delivered: list[str] | None = None


Outcome = Appended | Exception


class LogBatch(msgspec.Struct, kw_only=True):
    """Events read from the log after a checkpoint, and the checkpoint to resume from."""

    events: list[Event]
    cursor: str | None


class Backlog(msgspec.Struct, kw_only=True):
    """Runs due now and not held by a worker; the age of the oldest, by the database clock."""

    ready: int
    oldest_age_seconds: float


class MinuteCount(msgspec.Struct, kw_only=True):
    """Runs per minute: ``series`` is ``started`` (created) or the terminal status reached."""

    minute: datetime
    series: str
    count: int


class PoolStats(msgspec.Struct, kw_only=True):
    """Database connections of this process's pool."""

    in_use: int
    idle: int


class Primitives(Protocol):
    """One open write transaction of an adapter. The rules call these; they decide nothing."""

    namespace: str
    time: TxTime  # the transaction's time marker (see ``tables.TxTime``)

    async def now(self) -> datetime:
        """The transaction's time as the database has it."""
        ...

    async def lock_runs(self, run_ids: list[str]) -> dict[str, WorkflowRun]:
        """The current rows of these runs, locked until commit (in id order)."""
        ...

    async def insert_runs(self, runs: list[WorkflowRun]) -> set[str]:
        """Insert new run rows; returns the ids inserted (a taken id or idempotency key
        inserts nothing)."""
        ...

    async def find_by_key(self, workflow_name: str, key: str | None) -> WorkflowRun | None: ...

    async def write(self, plan: Plan) -> None:
        """Insert the plan's events, update its run rows, upsert its step rows."""
        ...

    async def select_ready(
        self, workflows: Sequence[WorkflowKey], limit: int, taken: Sequence[str] = ()
    ) -> Ready:
        """Lock the stored limits of ``workflows`` and up to ``limit`` claimable runs of them
        that those limits do not hold back (skipping rows locked by others and ``taken``):
        ready runs by priority, then age, then runs whose lease expired."""
        ...

    async def flow_usage(self, names: Sequence[str], keys: Sequence[tuple[str, str]]) -> Usage:
        """Places held and first claims in the rate window of these limited workflows and
        (workflow, key) pairs."""
        ...

    async def select_overdue(
        self, workflows: Sequence[WorkflowKey], limit: int
    ) -> list[WorkflowRun]:
        """Lock up to ``limit`` unclaimed runs of ``workflows`` past their deadline."""
        ...

    async def open_signal_waits(self, signal_name: str) -> list[StepAttempt]:
        """The open waits on a signal, their run and step rows locked."""
        ...

    async def open_attempts(self, run_ids: list[str]) -> list[StepAttempt]:
        """The step attempts of these runs still ``running``."""
        ...

    async def live_children(self, parent_ids: list[str]) -> list[str]:
        """Ids of the non-terminal children of these runs."""
        ...

    async def claim_signal_key(self, key: str, signal_name: str) -> bool:
        """Take an idempotency key for a send; False when an earlier send holds it."""
        ...

    async def signal_send(self, key: str, signal_name: str) -> list[str]:
        """The runs an earlier send with this key reached."""
        ...

    async def record_signal_send(self, key: str, signal_name: str, run_ids: list[str]) -> None: ...

    def notify(self, *, ready: Mapping[str, WorkflowKey], done: list[str]) -> None:
        """After commit, wake workers (``ready``: run id -> its workflow, for the runs made
        ready) and the waiters of runs that ended."""
        ...


@dataclass(frozen=True)
class Ready:
    """What a claim may take: candidate rows, and the stored limits of the workflows served."""

    rows: list[WorkflowRun]
    limits: dict[str, Limits]


@dataclass
class Claimed:
    """A claim's runs; ``retry_at``: when a full rate window lets the next run start;
    ``overdue``: ready runs past their deadline it left to ``fail_overdue``; ``limited``: a
    served workflow has stored limits (a run that ends may free a place for another);
    ``next_wake_at``: the earliest timer or lease end of the served workflows, where the claim
    read it too (``timers_read``; else the worker asks ``next_wake_at``); ``offered``: a claim of
    the one run a wake-up named, which reads no other timer (the worker's last reading holds,
    or ``next_wake_at``, the run's own time, if it is due later, comes first), and ``others``:
    more may be ready (claim again at once)."""

    runs: list[WorkflowRun]
    retry_at: datetime | None = None
    overdue: int = 0
    limited: bool = False
    timers_read: bool = False
    next_wake_at: datetime | None = None
    offered: bool = False
    others: bool = False


@dataclass(frozen=True)
class Single:
    """An append planned without reading the row: written in one statement if the row is
    still as planned (``old`` None: a new run, if its id and key are free)."""

    plan: Plan
    time: TxTime
    old: WorkflowRun | None
    new: WorkflowRun
    claim_token: str | None

    def written(self, now: datetime) -> Appended:
        """Its outcome, once written at the transaction time ``now``."""
        run = self.time.stamped(self.new, now)
        first_seq = 1 if self.old is None else self.old.seq + 1
        return Appended(run=run, created=self.old is None, first_seq=first_seq)


class OneStatementWrites(Protocol):
    """The capability to write a planned append, or a claim, in one statement (PostgreSQL)."""

    async def claim(
        self, worker_id: str, workflows: Sequence[WorkflowKey], limit: int, lease_seconds: float
    ) -> Claimed | None:
        """Claim up to ``limit`` ready runs in one round trip; None where the transaction path
        must decide (stored limits, the append gate taken)."""
        ...

    async def claim_offered(
        self, worker_id: str, workflows: Sequence[WorkflowKey], run_id: str, lease_seconds: float
    ) -> Claimed | None:
        """Claim ``run_id``, named by a wake-up, in one round trip if it is the run ``claim``
        would take first; ``others`` tells whether more may be ready. None as for ``claim``."""
        ...

    async def write_singles(self, singles: Sequence[Single]) -> list[datetime | None]:
        """Write each, in one round trip; the transaction time of those written, None for
        those whose row was not as planned (nothing of theirs is written)."""
        ...


class Reads(Protocol):
    """The read side of an adapter: one namespace of one database."""

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

    async def read_run_events(self, run_id: str, after: int = 0) -> list[Event]:
        """The run's events with a seq above ``after``, in order (all of them by default)."""
        ...

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

    async def next_wake_at(self, workflows: Sequence[WorkflowKey]) -> datetime | None:
        """The earliest future ``available_at`` or lease expiry among ``workflows``' runs."""
        ...

    # -- monitoring (dashboard, metrics): indexed reads only

    async def ready_backlog(self) -> Backlog:
        """Non-terminal runs due now (``available_at <= now``) and the oldest one's age."""
        ...

    async def count_unowned(self) -> int:
        """Non-terminal runs that nothing will pick up: no live lease (a claim whose
        ``lease_until`` is still ahead), no timer (``available_at``), and not waiting for a
        signal or a child (whose arrival wakes them). Should be 0."""
        ...

    async def runs_per_minute(self, minutes: int) -> list[MinuteCount]:
        """Runs created, and runs that reached each terminal status, per minute over the
        last ``minutes`` minutes (minutes with none are absent)."""
        ...

    async def runs_by_key(self, idempotency_key: str) -> list[WorkflowRun]:
        """The runs (one per workflow name at most) started with this idempotency key."""
        ...

    async def log_tail(self) -> str | None:
        """A ``read_log`` cursor at the current end of the log (None: the log is empty), so a
        reader can follow only what comes next."""
        ...

    async def events_at(self, keys: Sequence[tuple[str, int]]) -> list[Event]:
        """The events with these ``(run id, seq)``, those that exist, in no given order."""
        ...

    def pool_stats(self) -> PoolStats | None:
        """This process's database connections (None: no pool, as on SQLite)."""
        ...


class Adapter(Reads, Protocol):
    """A database behind the port."""

    namespace: str
    dialect: str  # names its migrations folder: "postgres" or "sqlite"

    @property
    def single(self) -> OneStatementWrites | None:
        """Its one-statement appends; None: every append takes a transaction."""
        ...

    async def open(self, *, migrate: bool = True) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        """Apply pending migrations (or only name them); returns their names."""
        ...

    async def schema_version(self) -> int: ...

    async def transaction(self, what: str, fn: Callable[[Primitives], Awaitable[T]]) -> T:
        """Run ``fn`` in one write transaction (again from the start after a deadlock); the
        notifications it asked for are sent once it commits."""
        ...

    async def heartbeat(self, claims: dict[str, str], lease_seconds: float) -> set[str]:
        """Extend the leases of ``{run_id: claim_token}``; returns the run ids still held."""
        ...

    def rebuilder(self) -> Rebuilder:
        """The backend half of ``reproject``."""
        ...

    def wake_channel(self) -> WakeChannel: ...

    @property
    def registry(self) -> WorkerRegistry: ...

    @property
    def retention(self) -> Retention:
        """Deleting (and archiving) old run trees, and importing archives."""
        ...

    @property
    def limits(self) -> FlowControl:
        """The ``run_limits`` table and what the limits hold back."""
        ...

    @property
    def schedules(self) -> Schedules:
        """The ``schedules`` table: cron schedules, their next tick and paused state."""
        ...
