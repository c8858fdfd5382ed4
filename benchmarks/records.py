"""The result records of every phase, and small statistics. Plain data: the phases fill them,
``report.py`` judges them, ``table.py`` and ``markdown.py`` print them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Throughput:
    """(a) a backlog of runs with four no-op steps, drained by one worker process."""

    runs: int
    steps_per_run: int
    worker_concurrency: int
    completed: int
    start_seconds: float
    starts_per_s: float
    seconds: float  # first claim -> last run finished, from the runs' own timestamps
    workflows_per_s: float
    steps_per_s: float
    wall_seconds_from_spawn: float  # process spawn (imports, connect) -> last run finished
    worker_cpu_ms_per_run: float | None  # worker process CPU (READY -> exit) per run
    postgres_cpu_ms_per_run: float | None  # CPU of the server backends serving the worker
    claims_per_run: float | None = None  # the worker's claim calls (worker_app.py)
    empty_claims_per_run: float | None = None  # ... of which found nothing


@dataclass
class Latency:
    """(b) enqueue (just before start()) -> first step start, on an idle worker."""

    runs: int
    rate_per_s: float
    worker_concurrency: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    start_call_p50_ms: float  # start() itself: the insert and its commit
    to_claim_p50_ms: float  # enqueue -> the claim transaction began (run_claimed.created_at)
    to_claim_p99_ms: float
    # The p50 split (each part's own p50; they need not add up to p50_ms exactly):
    to_created_p50_ms: float | None = None  # enqueue -> start()'s statement began (database)
    wake_p50_ms: float | None = None  # start() returned -> the worker calls its claim
    claim_p50_ms: float | None = None  # the worker's claim call (round trips, fold, commit)
    claim_to_step_p50_ms: float | None = None  # claim returned -> first step runs

    @property
    def parts_p50_sum_ms(self) -> float | None:
        parts = (
            self.start_call_p50_ms,
            self.wake_p50_ms,
            self.claim_p50_ms,
            self.claim_to_step_p50_ms,
        )
        return None if any(p is None for p in parts) else sum(p or 0.0 for p in parts)


@dataclass
class Sequential:
    """(c) one run of many sequential no-op steps."""

    steps: int
    worker_concurrency: int
    run_seconds: float  # run.started_at -> run.finished_at
    ms_per_step: float
    client_seconds: float  # before start() -> result() returned
    client_ms_per_step: float
    worker_cpu_ms_per_step: float | None
    postgres_cpu_ms_per_step: float | None


@dataclass
class Floor:
    """(d) the same database with bare psycopg: what no engine on top of it can beat."""

    jobs: int
    concurrency: int
    pool_size: int
    inserts_per_s: float  # single-row INSERT transactions, concurrent
    jobs_per_s: float  # claim (SKIP LOCKED + UPDATE) and complete (UPDATE) transactions
    sequential_job_p50_ms: float  # INSERT, claim, complete, one job at a time
    sequential_job_p99_ms: float
    insert_commit_p50_ms: float  # one single-row INSERT + commit
    insert_commit_p99_ms: float
    notify_p50_ms: float  # NOTIFY sent -> received by a LISTEN connection
    notify_p99_ms: float
    paced_rate_per_s: float  # the bare version of (b): enqueue+NOTIFY -> LISTEN -> claim
    paced_queue_p50_ms: float
    paced_queue_p99_ms: float


@dataclass
class Rebuild:
    """(e) ``reproject()`` folding the whole event log of the schema into fresh projections."""

    runs: int  # runs this phase wrote, each of steps_per_run steps
    steps_per_run: int
    events_built: int  # events this phase wrote (steps_per_run + 3 per run)
    build_seconds: float  # writing them through the store API
    build_events_per_s: float
    log_events: int  # the whole log (earlier phases included), counted before the rebuild
    events: int  # events folded by reproject() (report.events)
    seconds: float  # reproject(): rebuild, indexes, gate, catch-up, swap
    events_per_s: float
    gate_ms: float  # the exclusive append gate held (report.gate_seconds)
    gate_attempts: int
    verify_events: int  # reproject(verify=True): rebuild, then diff under the gate, discard
    verify_seconds: float
    verify_events_per_s: float
    verify_gate_ms: float
    verify_differences: int  # rows the verify found differing (expected 0)


@dataclass
class ScalePoint:
    """(a)-(c) measured once, with ``events`` events already in the log."""

    seeded_runs: int  # runs the seeder had written (terminal and parked)
    events: int  # events in the log when measured (count(*))
    workflow_runs: int  # rows of workflow_runs when measured
    workflows_per_s: float
    worker_cpu_ms_per_run: float | None
    p50_ms: float
    p99_ms: float
    claim_p50_ms: float | None
    ms_per_step: float  # the median of the (c) runs at this point
    ms_per_step_runs: list[float] = field(default_factory=list)  # each (c) run's ms per step
    insert_commit_ms: float | None = None  # the bare insert+commit p50 at this point


@dataclass
class Scale:
    """(f) the same (a)-(c) in a schema of its own, empty, then as a history is seeded."""

    seed_runs: int
    seed_terminal: int
    seed_parked: int
    seed_events: int
    seed_seconds: float  # writing the whole seed (seed.sql), VACUUM (ANALYZE) included
    checkpointed: bool = True  # a CHECKPOINT ended each seeding step
    points: list[ScalePoint] = field(default_factory=list)

    @property
    def empty(self) -> ScalePoint:
        return self.points[0]

    @property
    def full(self) -> ScalePoint:
        return self.points[-1]

    @property
    def workflows_ratio(self) -> float:
        """Seeded / empty workflows/s (1.0 = no change; the target is >= 0.9)."""
        return self.full.workflows_per_s / self.empty.workflows_per_s

    @property
    def p50_ratio(self) -> float:
        return self.full.p50_ms / self.empty.p50_ms

    @property
    def ms_per_step_ratio(self) -> float:
        return self.full.ms_per_step / self.empty.ms_per_step


@dataclass
class Wake:
    """One wake-up of the long run: its claim, then the next step's record."""

    steps_before: int  # function steps already in the run's history
    events_before: int  # events in the run's history before the claim
    wake_ms: float  # run_claimed.created_at -> the next event's created_at
    timer_lag_ms: float  # the sleep's due time -> run_claimed.created_at


@dataclass
class LongVariant:
    label: str  # "as is", "replay cache off", "replay cache on (N bytes)"[, "sleeping runs held"]
    replay_cache_bytes: int | None
    run_seconds: float
    wakes: list[Wake]
    first_ms: float  # median wake cost of the first five wake-ups (steps 10-50)
    last_ms: float  # ... of the last five (steps 960-1000)
    slope_ms_per_100_steps: float  # least squares over every wake-up
    hold_parked_runs: int | None = None  # the worker's hold_parked_runs, when set

    @property
    def growth(self) -> float:
        return self.last_ms / self.first_ms


@dataclass
class LongHistory:
    """(g) a 1,000-step workflow that sleeps every 10 steps: the cost of each wake-up."""

    steps: int
    sleep_every: int
    sleep_ms: float
    cache_supported: bool  # the installed ow_es's worker takes replay_cache_bytes
    variants: list[LongVariant] = field(default_factory=list)

    @property
    def judged(self) -> LongVariant:
        """The variant the target is judged on: the last, the worker's best setting for the
        run (sleeping runs held, where the worker can; else the cache on, where it has one)."""
        return self.variants[-1]


@dataclass
class WorkerCount:
    """(h) one backlog drained by ``workers`` processes."""

    workers: int
    runs: int  # the backlog: runs started
    workflows_per_s: float
    seconds: float  # first claim -> last end (database)
    start_seconds: float  # enqueueing the backlog (while the workers listen)
    claims: int | None
    empty_claims: int | None
    claimed: int | None  # runs the claims returned
    worker_cpu_ms_per_run: float | None  # all the workers' CPU (READY -> exit) per run
    # The trickle: ManyWorkers.trickle_runs started one at a time on idle workers.
    trickle_claims: int | None = None
    trickle_empty_claims: int | None = None

    @property
    def claims_per_run(self) -> float | None:
        return None if self.claims is None else self.claims / self.runs

    @property
    def empty_per_run(self) -> float | None:
        """Claims that found nothing per run started (the target: <= 1 at 8 workers)."""
        return None if self.empty_claims is None else self.empty_claims / self.runs

    def trickle_empty_per_run(self, runs: int) -> float | None:
        return None if self.trickle_empty_claims is None else self.trickle_empty_claims / runs


@dataclass
class ManyWorkers:
    runs: int  # the backlog
    concurrency: int  # per worker
    trickle_runs: int  # the trickle: runs started one at a time ...
    rate: float  # ... this many per second
    counts: list[WorkerCount] = field(default_factory=list)

    def at(self, workers: int) -> WorkerCount | None:
        return next((c for c in self.counts if c.workers == workers), None)


@dataclass
class InProcess:
    """(i) start() -> first step when the client's process runs the worker too."""

    runs: int
    rate_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class PgQueuer:
    """pgqueuer on the same database: its consumer in a process of its own, as ow-es's."""

    version: str
    driver: str
    latency_runs: int
    rate_per_s: float
    p50_ms: float  # enqueue() called -> the job's function starts
    p99_ms: float
    max_ms: float
    jobs: int
    batch_size: int
    seconds: float  # first job picked -> last job successful (its log, database time)
    jobs_per_s: float


@dataclass
class Dbos:
    """DBOS Transact on the same database: 4-step workflows run by a pool of threads."""

    version: str
    threads: int
    workflows: int
    steps_per_workflow: int
    seconds: float
    workflows_per_s: float
