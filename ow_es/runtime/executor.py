"""Replay one claimed run: re-run the workflow function from the top, answering recorded
steps from the history and recording new ones, until it finishes or parks.

A run that parks on a sleep or a wait for a signal may instead be held (``runtime/held.py``):
its workflow function stays suspended there, and this worker's next claim of the run continues
it, under the new claim, with no replay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.errors import (
    StepLimitExceeded,
    StoreUnavailable,
    ValidationError,
)
from ow_es.models import WorkflowRun
from ow_es.payload import check_name, error_info, from_json_value, to_json_value
from ow_es.runtime.committer import GroupCommitter
from ow_es.runtime.context import Context, RunInfo, Steps
from ow_es.runtime.held import HeldRuns, events_since
from ow_es.runtime.history import History
from ow_es.runtime.replay_cache import ReplayCache, Replayed, replay
from ow_es.runtime.unwind import Park, RunLost, Stale
from ow_es.runtime.writer import RunWriter
from ow_es.store import Store
from ow_es.workflow import Workflow

log = logging.getLogger("ow_es.executor")

_FAR_FUTURE = datetime.max.replace(tzinfo=utcnow().tzinfo)


@dataclass
class Settings:
    worker_id: str
    store: Store
    committer: GroupCommitter
    threads: Executor
    max_payload_bytes: int
    lease_seconds: float = 30.0
    max_crashes: int = 5  # executor crashes in a row before the run is failed
    max_suspensions: int = 100  # RetryAfter suspensions of one step before one counts
    replay_cache: ReplayCache | None = None  # the replay states of runs this worker parked
    held: HeldRuns | None = None  # the suspended functions of runs it parked on a wait


class Execution:
    def __init__(
        self,
        run: WorkflowRun,
        workflow: Workflow[Any],
        settings: Settings,
        lease_deadline: float | None = None,
    ) -> None:
        self.run = run
        self.workflow = workflow
        self.settings = settings
        self._claimed(run, lease_deadline)
        self._fresh()

    def _claimed(self, run: WorkflowRun, lease_deadline: float | None) -> None:
        """Hold the run by this claim of it."""
        self.run = run
        self.writer = RunWriter(run, self.settings.committer, self.settings.store)
        self.append = self.writer.append  # every write goes through the run's submit path
        # When our lease runs out unless a heartbeat moved it (event-loop clock): a worker that
        # was paused past it must not start user code for a run that may be someone else's.
        loop = asyncio.get_running_loop()
        self.lease_deadline = lease_deadline or loop.time() + self.settings.lease_seconds

    def _fresh(self) -> None:
        """The state of a replay that has not begun."""
        self.history = History()
        self._replayed: Replayed | None = None  # the history as read, for the replay cache
        self._names: dict[str, int] = {}  # base name -> last suffix handed out
        self._used: set[str] = set()
        self._parks: list[Park] = []
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.limit_exceeded = False
        self._deadline_hit = False
        # The workflow function's task: it outlives this claim when the run is held.
        self._body: asyncio.Future[tuple[str, Any]] | None = None
        self._holding: asyncio.Future[None] | None = None  # set when the body holds
        self._held: tuple[Park, asyncio.Future[None]] | None = None  # where the body waits

    @property
    def token(self) -> str:
        """The claim this execution holds the run by."""
        return self.writer.token

    # -- what step kinds see (``steps.host.StepHost``) --------------------------------------

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    @property
    def max_payload_bytes(self) -> int:
        return self.settings.max_payload_bytes

    @property
    def max_suspensions(self) -> int:
        return self.settings.max_suspensions

    @property
    def threads(self) -> Executor:
        return self.settings.threads

    def begin_attempt(self, name: str, attempt: int) -> None:
        if self.history.function_attempts >= self.workflow.max_step_attempts:
            self.limit_exceeded = True
            raise StepLimitExceeded(f"step {name!r}: the run reached its step attempt limit")
        self.history.function_attempts += 1
        self.history.attempts[name] = attempt

    async def ensure_lease(self) -> None:
        """Before user code runs: if the lease may have lapsed, make sure the run is ours."""
        loop = asyncio.get_running_loop()
        if loop.time() < self.lease_deadline:
            return
        sent = loop.time()
        try:
            held = await self.settings.store.heartbeat(
                {self.run.id: self.writer.token}, self.settings.lease_seconds
            )
        except StoreUnavailable:
            raise RunLost() from None
        if self.run.id not in held:
            raise RunLost()
        self.lease_deadline = sent + self.settings.lease_seconds

    # -- driving ---------------------------------------------------------------------------

    async def execute(self) -> None:
        await self._guarded(self._execute())

    async def _execute(self) -> None:
        if not await self._load_history():
            return
        if self.history.crashes >= self.settings.max_crashes:
            await self._fail_crashed()
            return
        await self._close_abandoned_attempts()
        await self._run_to_end()

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except RunLost:
            log.info("run %s: claim lost, dropping it", self.run.id)
        except Stale:
            await self._wait_idle()  # let sibling steps record their results first
            await self._release("new events arrived while it ran")
        except Exception as exc:  # a bug, or data that cannot be handled: never a silent hold
            log.error("run %s: executor crashed", self.run.id, exc_info=exc)
            await self._release("executor crashed", error=error_info(exc))

    async def _load_history(self) -> bool:
        """Read the run's history; False when the run is not ours to execute after all."""
        cache = self.settings.replay_cache
        try:
            replayed = await replay(self.settings.store, self.run, cache)
        except StoreUnavailable as exc:
            log.warning("run %s: cannot read its history (%s); releasing it", self.run.id, exc)
            await self._release("its history could not be read")
            return False
        self.history = replayed.history
        if cache is not None:  # kept as read for the cache; the run changes its own copy
            self._replayed = replayed
            self.history = replayed.history.copy()
        if self.history.claim_token != self.writer.token:
            log.warning("run %s: its history shows another claim; leaving it", self.run.id)
            return False
        self.writer.seq = max(self.writer.seq, self.history.seq)
        return True

    async def _fail_crashed(self) -> None:
        """The executor crashed on this run too often in a row: fail it, not reclaim it."""
        last = self.history.last_crash or {}
        error = {
            "type": "ExecutorCrashed",
            "message": f"the executor crashed {self.history.crashes} times in a row; last:"
            f" {last.get('type')}: {last.get('message')}",
            "traceback": str(last.get("traceback") or ""),
        }
        await self.append([self._failed_event(error)])

    async def _close_abandoned_attempts(self) -> None:
        """Attempts a lost worker left running are recorded as failed (not counted against the
        retry budget), so every attempt row tells what became of it."""
        if not self.history.unfinished:
            return
        error = {
            "type": "WorkerLost",
            "message": "the worker running this attempt lost the run (crash, pause or stop)",
            "traceback": "",
        }
        events: list[ev.EventData] = [
            ev.StepFailed(
                step_name=name,
                kind="function",
                attempt=started.attempt,
                error=error,
                started_at=self.history.started_at[name],
                final=False,
                worker_id=self.settings.worker_id,
                abandoned=True,
            )
            for name, started in sorted(self.history.unfinished.items())
        ]
        await self.append(events)
        for event in events:
            self.history.add(self.writer.seq, utcnow(), event)

    async def _run_to_end(self) -> None:
        if self._body is None:
            self._body = asyncio.ensure_future(self._call_body())
        body = self._body
        loop = asyncio.get_running_loop()
        # Set when the body holds (only where the worker holds runs: else await the body).
        holding = loop.create_future() if self.settings.held is not None else None
        self._holding = holding
        timer = None
        if self.run.deadline_at is not None:
            delay = max(0.0, (self.run.deadline_at - utcnow()).total_seconds())
            timer = loop.call_later(delay, self._deadline, body)
        try:
            if holding is None:
                outcome, value = await body
            else:
                await _first_of(body, holding)
                outcome, value = body.result() if body.done() else ("held", None)
        except asyncio.CancelledError:
            if not self._deadline_hit:
                raise
            outcome, value = "deadline", None
        finally:
            if holding is not None:
                holding.cancel()  # no hold once the body has ended or the claim is going
            if timer is not None:
                timer.cancel()
        if outcome == "held":
            await self._park_held()
            return
        await self._wait_idle()
        await self._finish(outcome, value)

    # -- held runs (runtime/held.py) --------------------------------------------------------

    async def hold(self, park: Park) -> bool:
        """Wait here, suspended, for this worker's next claim of the run instead of unwinding;
        False where the run must unwind as usual: holding is off, or the park is not the
        body's only step in flight. Raises the park when the worker lets the body go."""
        holding = self._holding
        if (
            self.settings.held is None
            or holding is None
            or holding.done()
            or self._inflight != 1
            or self._parks
            or self.limit_exceeded
            or self._deadline_hit
        ):
            return False
        self.parking(park)
        woken = asyncio.get_running_loop().create_future()
        self._held = (park, woken)
        holding.set_result(None)
        await woken
        return True

    async def _park_held(self) -> None:
        """Park the run as usual; the body stays where it waits if the worker keeps it."""
        try:
            await self._park()
        except BaseException:
            self.let_go()
            raise

    def may_resume(self, run: WorkflowRun) -> bool:
        """``run``, claimed by this worker, is the one we parked, and newer: ``resume`` then
        checks what happened since (only this claim, or events for the run such as the signal
        it waits for) and goes on with the held body, or else replays the run."""
        return (
            self._held is not None
            and run.created_at == self.run.created_at
            and run.seq > self.writer.seq
            and run.claim_token is not None
        )

    async def resume(self, run: WorkflowRun, lease_deadline: float | None = None) -> None:
        """Go on with the held body under the claim ``run`` holds, with the events since the
        park folded in; if another claim came between them, let the body go and replay."""
        await self._guarded(self._resume(run, lease_deadline))

    async def _resume(self, run: WorkflowRun, lease_deadline: float | None) -> None:
        assert self._held is not None
        parked_at = self.writer.seq
        self._claimed(run, lease_deadline)
        since = await events_since(self.settings.store, parked_at, run)
        if since is None:  # someone else held the run meanwhile: its held body is stale
            body = self.let_go()
            if body is not None:
                await asyncio.wait([body])  # it unwinds with this state before we reset it
            self._fresh()
            await self._execute()
            return
        for event in since:
            self.history.add(event.seq, event.created_at, event.data)
        _, woken = self._held
        self._held = None
        self._parks.clear()
        if self.settings.held is not None:
            self.settings.held.went_on()
        cache = self.settings.replay_cache
        self._replayed = cache.take(run.id) if cache is not None else None
        woken.set_result(None)  # the body goes on once this task awaits it
        await self._run_to_end()

    def let_go(self) -> asyncio.Future[tuple[str, Any]] | None:
        """Unwind the held body (the park is raised where it waits): it writes nothing.
        Returns the body's task, which ends on the next turns of the loop."""
        if self._held is None:
            return None
        park, woken = self._held
        self._held = None
        if not woken.done():
            woken.set_exception(park)
        return self._body

    def _deadline(self, body: asyncio.Future[Any]) -> None:
        self._deadline_hit = True
        body.cancel()

    async def _call_body(self) -> tuple[str, Any]:
        """Run the workflow function; ('ok', output), ('park', None) or ('error', exc)."""
        try:
            args: tuple[Any, ...] = ()
            if self.workflow.takes_input:
                args = (from_json_value(self.run.input, self.workflow.input_type, "input"),)
            ctx = Context(self._run_info(), Steps(self))
            output = await self.workflow.fn(ctx, *args)
        except Park:
            return "park", None
        except Exception as exc:
            return "error", exc
        return "ok", output

    def _run_info(self) -> RunInfo:
        return RunInfo(
            id=self.run.id,
            workflow_name=self.run.workflow_name,
            version=self.run.version,
            attempt=self.run.attempts,
            created_at=self.run.created_at,
            started_at=self.run.started_at,
        )

    async def _finish(self, outcome: str, value: Any) -> None:
        if outcome == "deadline":
            await self.append(
                [
                    self._failed_event(
                        {"type": "DeadlineExceeded", "message": "deadline exceeded"},
                        "deadline exceeded",
                    )
                ]
            )
        elif self.limit_exceeded:
            limit = self.workflow.max_step_attempts
            exc = StepLimitExceeded(f"the run made more than {limit} step attempts")
            await self.append([self._failed_event(error_info(exc))])
        elif self._parks:
            await self._park()
        elif outcome == "error":
            await self._body_failed(value)
        elif outcome == "ok":
            await self._complete(value)

    async def _complete(self, output: Any) -> None:
        try:
            value = to_json_value(
                output,
                "workflow output",
                self.settings.max_payload_bytes,
                schema=self.workflow.output_type,
            )
        except ValidationError as exc:
            await self.append([self._failed_event(error_info(exc))])
            return
        await self.append([ev.RunCompleted(output=value, worker_id=self.settings.worker_id)])

    async def _body_failed(self, exc: BaseException) -> None:
        policy = self.workflow.retry
        attempt = max(self.run.attempts, 1)
        if policy.retryable(exc) and attempt < policy.maximum_attempts:
            until = utcnow() + timedelta(seconds=policy.delay(attempt))
            await self.append(
                [
                    ev.RetryScheduled(
                        step_name=None,
                        attempt=attempt + 1,
                        until=until,
                        worker_id=self.settings.worker_id,
                    )
                ],
                expect=True,
            )
            self._parked()
            return
        await self.append([self._failed_event(error_info(exc))])

    def _failed_event(self, error: dict[str, Any], reason: str | None = None) -> ev.RunFailed:
        return ev.RunFailed(error=error, reason=reason, worker_id=self.settings.worker_id)

    async def _park(self) -> None:
        chosen = min(self._parks, key=lambda p: p.until or _FAR_FUTURE)
        worker = self.settings.worker_id
        data: ev.EventData
        if chosen.kind == "sleep":
            assert chosen.until is not None
            data = ev.RunSleeping(step_name=chosen.step, until=chosen.until, worker_id=worker)
        elif chosen.kind == "retry":
            assert chosen.until is not None
            data = ev.RetryScheduled(
                step_name=chosen.step,
                attempt=chosen.detail["attempt"],
                until=chosen.until,
                worker_id=worker,
                counted=chosen.detail.get("counted", True),
            )
        else:
            data = ev.RunWaiting(
                step_name=chosen.step,
                kind=chosen.kind,
                signal_name=chosen.detail.get("signal"),
                child_run_id=chosen.detail.get("child_run_id"),
                until=chosen.until,
                worker_id=worker,
            )
        await self.append([data], expect=True)
        self._parked()

    def _parked(self) -> None:
        """We parked the run: keep its history as read for our next claim of it, and its
        body if it holds."""
        if self._replayed is not None and self.settings.replay_cache is not None:
            self.settings.replay_cache.put(self.run.id, self._replayed)
        if self._held is not None and self.settings.held is not None:  # hold() made sure
            self.settings.held.keep(self.run.id, self)

    async def _release(self, reason: str, error: dict[str, Any] | None = None) -> None:
        released = ev.RunReleased(worker_id=self.worker_id, reason=reason, error=error)
        with contextlib.suppress(RunLost, Stale, StoreUnavailable):
            await self.append([released])

    async def release_after_stop(self) -> None:
        """The worker is stopping and this run did not finish in time: hand it back."""
        await self._release("worker stopped")

    # -- writing ---------------------------------------------------------------------------

    # -- steps -----------------------------------------------------------------------------

    def unique_name(self, name: str) -> str:
        """Repeated names get ':1', ':2'... in call order, skipping any name already taken
        (also one given explicitly, such as 'x:1')."""
        check_name(name, "step name")
        unique = name
        count = self._names.get(name, 0)
        while unique in self._used:
            count += 1
            unique = f"{name}:{count}"
        self._names[name] = count
        self._used.add(unique)
        return unique

    def check_active(self) -> None:
        """Once the run is parking, no new step starts (e.g. after gather(return_exceptions))."""
        if self._parks:
            raise self._parks[0]

    def parking(self, park: Park) -> Park:
        self._parks.append(park)
        return park

    async def tracked(self, coro: Any) -> Any:
        self._inflight += 1
        self._idle.clear()
        try:
            return await coro
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _wait_idle(self) -> None:
        """Let steps still running (siblings in a gather) finish and record their results."""
        await self._idle.wait()


async def _first_of(body: asyncio.Future[Any], holding: asyncio.Future[None]) -> None:
    """Until the body ends or holds. Cancelled, the body is cancelled and awaited, as when it
    is awaited directly."""
    try:
        await asyncio.wait([body, holding], return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        body.cancel()
        await asyncio.wait([body])
        raise
