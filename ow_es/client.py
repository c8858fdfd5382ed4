"""The client: connect, define and start workflows, and manage runs."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

from ow_es import config, scheduling
from ow_es.durations import Duration, to_datetime, utcnow
from ow_es.errors import ConfigError, RunNotFound, ValidationError
from ow_es.handle import RunHandle
from ow_es.limits import Limits
from ow_es.models import RUN_STATUSES, Event, RunPage, RunState
from ow_es.operations import Operations
from ow_es.payload import check_name, check_priority, to_json_value
from ow_es.projections import fold_run
from ow_es.retry import WORKFLOW_DEFAULT, RetryPolicy
from ow_es.runtime import handoff
from ow_es.runtime.worker import Worker, WorkerOptions
from ow_es.schedule import CatchUp, Overlap, Schedule, ScheduleInfo
from ow_es.store import Appended, Store, make_store
from ow_es.store.codec import current_shape, recorded_from_event
from ow_es.store.plan import start_request
from ow_es.store.schedules_port import ScheduleRow
from ow_es.transient import retrying
from ow_es.workflow import Workflow, WorkflowFn

TimeLike = datetime | Duration
T = TypeVar("T")


class OpenWorkflow(Operations):
    """An ow-es client. Safe to create at import time; ``connect()`` (or ``async with``) opens
    it. URL, namespace and schema default to the environment (see ``ow_es.config``)."""

    def __init__(
        self,
        url: str | None = None,
        namespace: str | None = None,
        schema: str | None = None,
        *,
        max_payload_bytes: int = config.DEFAULT_MAX_PAYLOAD_BYTES,
        migrate: bool = True,
        pool_size: int = 10,
        retry_seconds: float = 10.0,
        max_suspensions: int = 100,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.schema = schema
        self.max_payload_bytes = max_payload_bytes
        self.migrate = migrate
        self.pool_size = pool_size
        if max_suspensions < 0:
            raise ConfigError("max_suspensions must not be negative")
        self.max_suspensions = max_suspensions  # RetryAfter suspensions per step
        self.retry_seconds = retry_seconds  # how long calls ride out a connection failure
        self.settings: config.Settings | None = None
        self._store: Store | None = None
        self._workflows: dict[tuple[str, str | None], Workflow[Any]] = {}
        self._schedules: dict[str, tuple[Workflow[Any], Schedule]] = {}
        # This client's workers while they claim: a start here is handed to one of them with
        # a slot free, created already claimed by it (runtime/handoff.py).
        self.claiming_workers: list[Worker] = []

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> Self:
        if self._store is not None:
            return self
        settings = config.resolve(self.url, self.namespace, self.schema)
        store = make_store(settings, pool_size=self.pool_size, retry_seconds=self.retry_seconds)
        await store.open(migrate=self.migrate)
        self.settings, self._store = settings, store
        return self

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ConfigError("the client is not connected: call `await ow.connect()` first")
        return self._store

    # -- definitions -----------------------------------------------------------------------

    def workflow(
        self,
        *,
        name: str,
        version: str | None = None,
        retry: RetryPolicy | None = None,
        max_step_attempts: int = 1000,
        schedule: Schedule | None = None,
        limits: Limits | None = None,
    ) -> Callable[[WorkflowFn], Workflow[Any]]:
        """Define a workflow and register it on this client (``schedule``: its cron
        schedule, named after the workflow; ``limits``: its flow control, stored by its
        workers unless an operator stored others)."""

        def define(fn: WorkflowFn) -> Workflow[Any]:
            spec: Workflow[Any] = Workflow(
                name=name,
                fn=fn,
                version=version,
                retry=retry or WORKFLOW_DEFAULT,
                max_step_attempts=max_step_attempts,
                schedule=schedule,
                limits=limits,
            )
            return self.register(spec)

        return define

    def register(self, workflow: Workflow[Any]) -> Workflow[Any]:
        """Serve ``workflow`` on this client's workers; it also becomes startable from here."""
        if not isinstance(workflow, Workflow):
            raise TypeError(f"expected a workflow definition, got {workflow!r}")
        self._workflows[workflow.key] = workflow
        if workflow.client is None:
            workflow.client = self
        if workflow.schedule is not None:
            self._add_schedule(workflow.name, workflow, workflow.schedule)
        return workflow

    def schedule(
        self,
        name: str,
        workflow: Workflow[Any],
        *,
        cron: str,
        timezone: str = "UTC",
        input: Any = None,
        overlap: Overlap = "skip",
        catch_up: CatchUp = "latest",
    ) -> Schedule:
        """Run ``workflow`` on a cron schedule; this client's workers serve it and fire its
        ticks (each tick one run, with the key ``schedule:<name>:<tick time>``)."""
        spec = Schedule(cron, timezone=timezone, overlap=overlap, catch_up=catch_up, input=input)
        if self._workflows.get(workflow.key) is not workflow:
            self.register(workflow)
        self._add_schedule(name, workflow, spec)
        return spec

    def _add_schedule(self, name: str, workflow: Workflow[Any], spec: Schedule) -> None:
        check_name(name, "schedule name")
        if not workflow.takes_tick:
            schema = workflow.input_type if workflow.takes_input else Any
            to_json_value(spec.input, "schedule input", self.max_payload_bytes, schema)
        self._schedules[name] = (workflow, spec)

    def schedule_rows(self, now: datetime) -> list[ScheduleRow]:
        """The schedules registered here, as rows whose next tick is the first after ``now``."""
        return scheduling.rows(self._schedules, self.max_payload_bytes, now)

    def registered(self, name: str, version: str | None) -> Workflow[Any] | None:
        return self._workflows.get((name, version))

    def _registered_by_name(self, name: str, version: str | None) -> Workflow[Any] | None:
        """The definition a start by name means: the one registered with that name and
        version, or, without a version, the only version of that name registered here."""
        if version is not None:
            return self._workflows.get((name, version))
        found = [w for (n, _), w in self._workflows.items() if n == name]
        return found[0] if len(found) == 1 else None

    def registered_keys(self) -> list[tuple[str, str | None]]:
        return list(self._workflows)

    @property
    def workflows(self) -> list[Workflow[Any]]:
        return list(self._workflows.values())

    def worker(self, **options: Unpack[WorkerOptions]) -> Worker:
        """A worker serving the workflows registered on this client (options: ``Worker``)."""
        return Worker(self, **options)

    # -- runs ------------------------------------------------------------------------------

    async def start(
        self,
        workflow: Workflow[Any] | str,
        input: Any = None,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
        available_at: TimeLike | None = None,
        deadline_at: TimeLike | None = None,
        key: str | None = None,
        priority: int = 0,
    ) -> RunHandle:
        """Start a run of ``workflow`` (a definition or a name). With ``idempotency_key``, the
        existing run of that workflow and key is returned instead, whatever its status.
        ``key``: what per-key limits count by; ``priority``: higher is claimed first."""
        spec = workflow if isinstance(workflow, Workflow) else None
        name = check_name(spec.name if spec is not None else workflow, "workflow name")
        if spec is None:
            spec = self._registered_by_name(name, version)
        if version is None and spec is not None:
            version = spec.version
        if version is not None:
            check_name(version, "workflow version")
        if idempotency_key is not None:
            check_name(idempotency_key, "idempotency_key")
        if key is not None:
            check_name(key, "key")
        check_priority(priority)
        schema = spec.input_type if spec is not None and spec.takes_input else Any
        value = to_json_value(input, "input", self.max_payload_bytes, schema)
        now = utcnow()
        try:
            start_at = now if available_at is None else to_datetime(available_at, "available_at")
            deadline = None if deadline_at is None else to_datetime(deadline_at, "deadline_at")
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        request = start_request(
            name,
            version,
            value,
            idempotency_key=idempotency_key,
            available_at=start_at,
            deadline_at=deadline,
            key=key,
            priority=priority,
        )
        handed = None
        if spec is not None and idempotency_key is None and start_at <= now:
            handed = handoff.reserve(
                self.claiming_workers, name, version, limited=spec.limits is not None
            )
        if handed is not None:
            request = handed.claiming(request)
        try:
            # Sent again after a lost reply, the same request (same run id) finds its own run.
            (outcome,) = await self._retrying(
                "starting a run", lambda: self.store.append([request])
            )
        except BaseException:
            if handed is not None:
                handed.cancel()
            raise
        if handed is not None:
            handed.deliver(outcome)
        if not isinstance(outcome, Appended):
            raise outcome
        return RunHandle(self, outcome.run.id, outcome.run.workflow_name, spec)

    # -- schedules -------------------------------------------------------------------------

    async def schedules(self) -> list[ScheduleInfo]:
        """The schedules stored in this namespace, with their last run's status."""
        return await scheduling.stored(self.store)

    async def pause_schedule(self, name: str) -> None:
        """Stop firing ``name``'s ticks (stored: survives deploys) until ``resume_schedule``."""
        await scheduling.set_paused(self.store, name, True)

    async def resume_schedule(self, name: str) -> None:
        """Fire ``name`` again; ticks missed while paused follow its catch-up policy."""
        await scheduling.set_paused(self.store, name, False)

    async def trigger_schedule(self, name: str) -> RunHandle:
        """Start a run of ``name`` now, outside its cron (key ``schedule:<name>:manual:<id>``)."""
        return await scheduling.trigger(self, name)

    async def get_handle(self, run_id: str) -> RunHandle:
        run = await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} not found")
        spec = next((w for w in self._workflows.values() if w.name == run.workflow_name), None)
        return RunHandle(self, run.id, run.workflow_name, spec)

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow_name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        if status is not None and status not in RUN_STATUSES:
            raise ValidationError(
                f"unknown status {status!r}: use one of {', '.join(RUN_STATUSES)}"
            )
        return await self.store.list_runs(
            status=status, workflow_name=workflow_name, limit=limit, cursor=cursor
        )

    async def history(self, run_id: str) -> list[Event]:
        """Every event of the run in order. Events written by an older ow-es are upcast to the
        current shape (``schema_version`` then names the shape of ``data``)."""
        events = await self.store.read_run_events(run_id)
        if not events:
            raise RunNotFound(f"run {run_id} not found")
        return [current_shape(e) for e in events]

    async def state_at(self, run_id: str, seq: int) -> RunState:
        """The run and its step attempts as of its event number ``seq``."""
        events = [e for e in await self.history(run_id) if e.seq <= seq]
        if seq < 1:
            raise ValidationError("seq starts at 1")
        run, steps = fold_run(recorded_from_event(e) for e in events)
        assert run is not None
        return RunState(run=run, steps=steps)

    async def cancel(self, run_id: str, *, cascade: bool = True) -> None:
        """Cancel a pending or running run (and its children); again on a canceled run it does
        nothing; on a completed or failed run it raises InvalidTransition."""
        await self._retrying(
            "canceling a run", lambda: self.store.cancel(run_id, cascade=cascade)
        )  # canceling again is a no-op: safe to repeat

    async def resume(self, run_id: str) -> RunHandle:
        """A failed run goes on from its failed step; completed steps are not re-run."""
        await self.store.resume(run_id)
        return await self.get_handle(run_id)

    async def send_signal(
        self, signal: str, data: Any = None, *, idempotency_key: str | None = None
    ) -> list[str]:
        """Deliver ``signal`` to every run waiting on it; returns their ids ([] if none)."""
        check_name(signal, "signal name")
        if idempotency_key is not None:
            check_name(idempotency_key, "idempotency_key")
        value = to_json_value(data, f"signal {signal!r} data", self.max_payload_bytes)
        # A send without a key gets one, so a repeat after a lost reply delivers nothing twice.
        key = idempotency_key or f"ow-es:{uuid.uuid4().hex}"
        return await self._retrying(
            "sending a signal", lambda: self.store.send_signal(signal, value, key)
        )

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        return await retrying(what, op, seconds=self.retry_seconds)


async def connect(
    url: str | None = None,
    namespace: str | None = None,
    schema: str | None = None,
    **options: Any,
) -> OpenWorkflow:
    """A connected client: the argument URL, else the environment, else ./openworkflow.db."""
    return await OpenWorkflow(url, namespace, schema, **options).connect()
