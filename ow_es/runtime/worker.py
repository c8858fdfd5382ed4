"""The worker: claims ready runs of its workflows and executes them, up to ``concurrency``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypedDict

from ow_es.durations import Duration, to_seconds, utcnow
from ow_es.errors import OwEsError
from ow_es.metrics import WorkerMetrics
from ow_es.models import WorkerInfo, WorkflowRun
from ow_es.runtime.committer import GroupCommitter
from ow_es.runtime.executor import Execution, Settings
from ow_es.runtime.held import HeldRuns
from ow_es.runtime.lane import LaneWakes
from ow_es.runtime.replay_cache import ReplayCache
from ow_es.runtime.run_log import log_end
from ow_es.runtime.schedule_loop import fire_schedules
from ow_es.store.port import Claimed
from ow_es.store.wake import Lane
from ow_es.store.wake_port import ReadyWaiter

if TYPE_CHECKING:
    from datetime import datetime

    from ow_es.client import OpenWorkflow

log = logging.getLogger("ow_es.worker")

_ABORT_SECONDS = 0.9  # a cancelled worker hands its runs back within about a second
_LEAVE_SECONDS = 10.0  # a stopping worker's last write: leaving the registry
_FAST_POLL = 0.02  # without pushed wake-ups: seconds between claims right after work was found


class WorkerOptions(TypedDict, total=False):
    """The settings of a worker (``ow.worker(**options)``); defaults as in ``Worker``."""

    concurrency: int
    lease: Duration
    heartbeat: Duration | None
    poll_interval: Duration
    stop_timeout: Duration
    worker_id: str | None
    max_crashes: int
    metrics_port: int | None
    metrics: WorkerMetrics | None
    replay_cache_bytes: int
    hold_parked_runs: int


class Worker:
    def __init__(
        self,
        client: OpenWorkflow,
        *,
        concurrency: int = 10,
        lease: Duration = "30s",
        heartbeat: Duration | None = None,
        poll_interval: Duration = "1s",
        stop_timeout: Duration = "30s",
        worker_id: str | None = None,
        max_crashes: int = 5,
        metrics_port: int | None = None,
        metrics: WorkerMetrics | None = None,
        replay_cache_bytes: int = 64 * 1024 * 1024,
        hold_parked_runs: int = 0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_crashes < 1:
            raise ValueError("max_crashes must be at least 1")
        self.max_crashes = max_crashes
        if replay_cache_bytes < 0:
            raise ValueError("replay_cache_bytes must be at least 0 (0 turns the cache off)")
        # The replay states of runs this worker parked (runtime/replay_cache.py); 0: none.
        self.replay_cache = ReplayCache(replay_cache_bytes) if replay_cache_bytes else None
        if hold_parked_runs < 0:
            raise ValueError("hold_parked_runs must be at least 0 (0 turns holding off)")
        # Runs parked on a wait whose function waits for our next claim (runtime/held.py).
        self.held = HeldRuns(hold_parked_runs) if hold_parked_runs else None
        # Prometheus metrics (ow_es.metrics), served on metrics_port while the worker runs.
        if metrics is None and metrics_port is not None:
            metrics = WorkerMetrics(port=metrics_port)
        self.metrics = metrics
        self.client = client
        self.concurrency = concurrency
        self.lease = to_seconds(lease, "lease")
        self.heartbeat_interval = (
            to_seconds(heartbeat, "heartbeat") if heartbeat is not None else self.lease / 3
        )
        if self.heartbeat_interval >= self.lease:
            raise ValueError("heartbeat must be shorter than the lease")
        self.poll_interval = to_seconds(poll_interval, "poll_interval")
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stop_timeout = to_seconds(stop_timeout, "stop_timeout")
        self._active: dict[str, tuple[asyncio.Task[None], Execution]] = {}
        self._slot_freed = asyncio.Event()
        self._overdue_checked_at = float("-inf")  # loop time of the busy worker's last check
        self._threads: ThreadPoolExecutor | None = None
        self._run_task: asyncio.Task[Any] | None = None
        self._releasing: asyncio.Future[None] | None = None  # kept so it is not collected
        self._lane = LaneWakes(Lane(None))  # its own wake-ups (runtime/lane.py), once running
        self._next_wake_at: datetime | None = None  # the served workflows' next timer, as read
        # Starts of this client handed to this worker (runtime/handoff.py): slots held for
        # starts in flight, whether its last claim saw stored limits, what it serves.
        self._settings: Settings | None = None
        self._reserved = 0
        self._limited = True  # until a claim says no served workflow has stored limits
        self._served: set[tuple[str, str | None]] = set()
        self._handbacks: set[asyncio.Future[None]] = set()

    # -- public ----------------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = False) -> None:
        """Serve until ``stop()`` (or cancellation); in-flight runs are then finished within the
        stop timeout or released for other workers."""
        store = self.client.store
        workflows = self.client.registered_keys()
        if not workflows:
            raise OwEsError("no workflows are registered on this client; nothing to serve")
        wake = store.wake_channel()
        await wake.start()
        self._lane = LaneWakes(await wake.open_lane(self.worker_id))  # before it registers
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ow-es-step")
        settings = Settings(
            worker_id=self.worker_id,
            store=store,
            committer=GroupCommitter(store, metrics=self.metrics),
            threads=self._threads,
            max_payload_bytes=self.client.max_payload_bytes,
            lease_seconds=self.lease,
            max_crashes=self.max_crashes,
            max_suspensions=self.client.max_suspensions,
            replay_cache=self.replay_cache,
            held=self.held,
        )
        self._run_task = asyncio.current_task()
        self._settings, self._served = settings, set(workflows)
        if handle_signals:
            self._install_signal_handlers()
        if self.metrics is not None:
            self.metrics.start(self)
        await self._register(workflows)
        heartbeats = asyncio.create_task(self._heartbeat_loop(), name="ow-es-heartbeat")
        schedules = asyncio.create_task(
            fire_schedules(self.client, self.poll_interval, self.metrics), name="ow-es-schedules"
        )
        leaving = _LEAVE_SECONDS
        try:
            self.client.claiming_workers.append(self)
            try:
                await self._claim_loop(settings, workflows)
            finally:
                self.client.claiming_workers.remove(self)  # no start is handed over now
                self._lane.close()  # it claims no more: its wake-ups go to every worker
            await self._drain()
        except asyncio.CancelledError:  # also while draining: a second signal, say
            leaving = _ABORT_SECONDS / 3
            await self._abort()
            raise
        finally:
            if self.held is not None:  # their runs are parked: any worker may take them
                unwinding = self.held.let_go_all()
                if unwinding:
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait(unwinding, timeout=_ABORT_SECONDS / 3)
            heartbeats.cancel()
            schedules.cancel()
            self._threads.shutdown(wait=False, cancel_futures=True)
            if self.metrics is not None:
                self.metrics.stop()
            with contextlib.suppress(OwEsError, asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(leaving):  # else its row expires with its ttl
                    await store.registry.forget(self.worker_id)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; let in-flight runs finish for up to ``timeout`` seconds (default: the
        worker's ``stop_timeout``), then release the rest for other workers."""
        if timeout is not None:
            self._stop_timeout = timeout
        self._stopping.set()

    @property
    def busy_slots(self) -> int:
        return len(self._active)

    # -- starts handed over by this client (runtime/handoff.py) ------------------------------

    def reserve(self, workflow: tuple[str, str | None]) -> float | None:
        """Hold a slot for a run of ``workflow`` this client is starting: the lease deadline
        (event-loop clock) the run will hold, or None where this worker would not claim the
        run at once (stopping, full, not serving it, stored limits seen at its last claim)."""
        if (
            self not in self.client.claiming_workers  # claiming: its settings are set
            or self._stopping.is_set()
            or self._limited
            or workflow not in self._served
            or len(self._active) + self._reserved >= self.concurrency
        ):
            return None
        self._reserved += 1
        return asyncio.get_running_loop().time() + self.lease

    def unreserve(self) -> None:
        """A held slot is free again (the start failed, or returned another run)."""
        self._reserved -= 1
        self._slot_freed.set()

    def adopt(self, run: WorkflowRun, lease_deadline: float) -> None:
        """Execute a run this client started claimed by this worker, in its held slot; one
        that comes after the worker stopped claiming is handed back at once."""
        self._reserved -= 1
        settings = self._settings
        assert settings is not None  # set before any slot could be held
        if self in self.client.claiming_workers and not self._stopping.is_set():
            if self.metrics is not None:
                self.metrics.claimed([run], self.client.store)
            self._start(run, settings, lease_deadline)
            return
        workflow = self.client.registered(run.workflow_name, run.version)
        assert workflow is not None  # it was served when the slot was held
        execution = Execution(run, workflow, settings, lease_deadline)
        handback = asyncio.ensure_future(execution.release_after_stop())
        self._handbacks.add(handback)  # kept until done, so it is not collected
        handback.add_done_callback(self._handbacks.discard)

    # -- loops -----------------------------------------------------------------------------

    async def _claim_loop(
        self, settings: Settings, workflows: list[tuple[str, str | None]]
    ) -> None:
        store = self.client.store
        wake = store.wake_channel()
        ready = wake.ready_waiter()  # subscribed before the first claim: no wake-up is lost
        idle_wait = _FAST_POLL
        claiming = True  # False: only a run of ours ended, which readies no other
        woke: set[str] = set()
        while not self._stopping.is_set():
            free = self.concurrency - len(self._active) - self._reserved
            claim, seen, claimed_from = Claimed(runs=[]), self._lane.seen, None
            offered = self._lane.offered(woke)  # woken for one run alone: claim it by its id
            # The lease runs from before the claim was sent, never later than the database's.
            lease_deadline = asyncio.get_running_loop().time() + self.lease
            claim_sent = utcnow()  # what was due by then, the claim saw
            try:
                if free > 0 and claiming:
                    claim = await store.claim_ready(
                        self.worker_id, workflows, free, self.lease, offered=offered
                    )
                    claimed_from = seen
                    self._limited = claim.limited
                elif free == 0:  # no slot to claim into, but deadlines still end runs on time
                    self._lane.after_round(claimed_from=None, full=True)  # pass wake-ups on
                    await self._fail_overdue(workflows)
            except OwEsError as exc:
                log.warning("claim failed: %s", exc)
            claimed = claim.runs
            self._lane.after_round(claimed_from=claimed_from, full=free == len(claimed))
            if self.metrics is not None:
                self.metrics.claimed(claimed, store)
            for run in claimed:
                self._start(run, settings, lease_deadline)
            self.ready.set()
            if free > 0 and (len(claimed) == free or claim.others):
                woke = set()
                continue  # there may be more ready work
            timeout = self.poll_interval
            if not wake.pushes:
                # No notifications across processes: poll fast while busy, back off when idle.
                idle_wait = _FAST_POLL if claimed else min(idle_wait * 2, self.poll_interval)
                timeout = idle_wait
            if free > len(claimed):
                timeout = min(timeout, await self._until_next_timer(workflows, claim, claim_sent))
                if claim.retry_at is not None:
                    until_free = (claim.retry_at - utcnow()).total_seconds()
                    timeout = min(timeout, max(_FAST_POLL, until_free))
            full = free == len(claimed)
            woke = await self._wait_for_work(ready, timeout, full=full)
            # A run of ours that ended or parked frees a slot (and may set a timer: the next
            # round reads it); it readies another run only when we were full (work may be
            # waiting) or a limit may have held one back. Else claiming would find nothing.
            claiming = woke != {"slot"} or full or claim.limited or not wake.pushes

    async def _fail_overdue(self, workflows: list[tuple[str, str | None]]) -> None:
        """While every slot is busy: fail the ready runs past their deadline, about once per
        poll interval (checks at least half of one apart; not on every round: a busy worker
        fills up again and again)."""
        now = asyncio.get_running_loop().time()
        if now < self._overdue_checked_at + self.poll_interval / 2:
            return
        self._overdue_checked_at = now
        await self.client.store.fail_overdue(self.worker_id, workflows)

    async def _until_next_timer(
        self, workflows: list[tuple[str, str | None]], claim: Claimed, claim_sent: datetime
    ) -> float:
        """Seconds until the next timer: as the claim read it, else read now (a round trip
        that would delay the runs just claimed: they start only when this awaits), but after a
        claim of an offered run as last read, or that run's own time if it comes first (a run
        due later). A time of the last reading that was past when that claim was sent is
        dropped: the claim found nothing else ready (else it would have claimed again), so it
        was the offered run's own, or is taken."""
        if claim.timers_read:
            self._next_wake_at = claim.next_wake_at
        elif claim.offered:
            last = self._next_wake_at
            if last is not None and last <= claim_sent:
                last = None
            times = (last, claim.next_wake_at)
            self._next_wake_at = min((t for t in times if t is not None), default=None)
        else:
            try:
                self._next_wake_at = await self.client.store.next_wake_at(workflows)
            except OwEsError:
                return self.poll_interval
        wake_at = self._next_wake_at
        if wake_at is None:
            return self.poll_interval
        return max(0.0, (wake_at - utcnow()).total_seconds())

    async def _wait_for_work(self, ready: ReadyWaiter, timeout: float, *, full: bool) -> set[str]:
        """Wait for a wake-up, a finished run (a freed slot, perhaps a new timer), a stop, or
        the timeout; returns what came ("ready", "slot", "stop", "lane"; empty: the timeout).
        While every slot is busy, wake-ups wait for a slot first, but those sent to this worker
        alone (its lane) are passed on to every worker."""
        waiters: dict[str, asyncio.Future[Any]] = {
            "stop": asyncio.ensure_future(self._stopping.wait()),
            "slot": asyncio.ensure_future(self._slot_freed.wait()),
        }
        if not full:
            waiters["ready"] = asyncio.ensure_future(ready.wait(timeout))
        else:  # but a wake-up sent to this worker alone is passed on at once
            waiters["lane"] = asyncio.ensure_future(self._lane.wait(timeout))
        try:
            await asyncio.wait(
                waiters.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            return {
                what
                for what, w in waiters.items()
                if w.done() and not w.cancelled() and w.result() is not False
            }
        finally:
            for waiter in waiters.values():
                waiter.cancel()
            self._slot_freed.clear()

    def _start(self, run: WorkflowRun, settings: Settings, lease_deadline: float) -> None:
        workflow = self.client.registered(run.workflow_name, run.version)
        if workflow is None:  # cannot happen: the claim filters by registered name and version
            log.error("claimed run %s of unknown workflow %s", run.id, run.workflow_name)
            return
        held = self.held.take(run) if self.held is not None else None
        if isinstance(held, Execution):  # its function waits where it parked: go on from there
            execution, work = held, held.resume(run, lease_deadline)
        else:
            execution = Execution(run, workflow, settings, lease_deadline)
            work = execution.execute()
        task = asyncio.create_task(work, name=f"ow-es-run-{run.id}")
        self._active[run.id] = (task, execution)
        task.add_done_callback(functools.partial(self._finished, run.id))

    def _finished(self, run_id: str, _task: asyncio.Task[None]) -> None:
        entry = self._active.pop(run_id, None)
        if entry is not None and not entry[0].cancelled() and entry[0].exception() is not None:
            log.error("run %s: executor crashed", run_id, exc_info=entry[0].exception())
        elif entry is not None:
            log_end(entry[1].writer.last_row)
        self._slot_freed.set()

    async def _register(self, workflows: list[tuple[str, str | None]]) -> None:
        """Record this worker in the registry: what it serves, so runs nobody serves show."""
        me = WorkerInfo(
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            workflows=workflows,
            concurrency=self.concurrency,
            busy=0,
            started_at=utcnow(),
            heartbeat_at=utcnow(),
            lane=self._lane.lane.name,
        )
        try:
            await self.client.store.registry.register(me, self._registry_ttl)
        except OwEsError as exc:
            log.warning("could not record the worker in the registry: %s", exc)
        declared = {w.name: w.limits for w in self.client.workflows if w.limits is not None}
        if declared:
            try:
                await self.client.store.limits.declare(declared)
            except OwEsError as exc:
                log.warning("could not store the workflows' limits: %s", exc)

    @property
    def _registry_ttl(self) -> float:
        """A worker that missed this long of heartbeats counts as gone."""
        return max(self.lease, 3 * self.heartbeat_interval)

    async def _heartbeat_loop(self) -> None:
        store = self.client.store
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self._extend_leases()  # first: the leases matter more than the registry
            try:
                await store.registry.beat(self.worker_id, busy=len(self._active))
            except OwEsError as exc:
                log.warning("registry heartbeat failed: %s", exc)

    async def _extend_leases(self) -> None:
        claims = {run_id: ex.token for run_id, (_, ex) in self._active.items()}
        if not claims:
            return
        sent = asyncio.get_running_loop().time()
        try:
            held = await self.client.store.heartbeat(claims, self.lease)
        except OwEsError as exc:
            log.warning("heartbeat failed: %s", exc)
            return
        for run_id in held:
            entry = self._active.get(run_id)
            if entry is not None and entry[1].token == claims[run_id]:
                entry[1].lease_deadline = sent + self.lease
        for run_id in set(claims) - held:
            entry = self._active.get(run_id)
            if entry is not None and entry[1].token == claims[run_id]:
                log.info("run %s: lease lost (canceled or taken over); dropping it", run_id)
                entry[0].cancel()

    async def _drain(self) -> None:
        """``stop()``: give in-flight runs the stop timeout, then cancel and release the
        rest."""
        tasks = [task for task, _ in self._active.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=self._stop_timeout)
        leftovers = list(self._active.values())
        await _cancel(leftovers, wait=None)
        await _release(leftovers)

    async def _abort(self) -> None:
        """The task running ``run()`` was cancelled: cancel every execution now (a sync step
        is left to its thread; its late result is fenced out), and hand their runs back to
        other workers at once, within about a second."""
        leftovers = list(self._active.values())
        with contextlib.suppress(asyncio.CancelledError):
            await _cancel(leftovers, wait=_ABORT_SECONDS / 3)
            # The hand-back goes on in the background if the database is slow to answer
            # (the loop of an embedding app keeps running); run() returns on time anyway.
            releasing = asyncio.ensure_future(_release(leftovers))
            self._releasing = releasing
            await asyncio.wait([releasing], timeout=_ABORT_SECONDS * 2 / 3)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        """The first SIGINT/SIGTERM stops gracefully; a second one stops at once."""
        if not self._stopping.is_set():
            self._stopping.set()
        elif self._run_task is not None:
            self._run_task.cancel()


Leftovers = list[tuple[asyncio.Task[None], Execution]]


async def _cancel(leftovers: Leftovers, wait: float | None) -> None:
    """Cancel these executions and wait for them to end (at most ``wait`` seconds: a release
    after that is fenced against anything they might still write)."""
    for task, _ in leftovers:
        task.cancel()
    if leftovers:
        await asyncio.wait([task for task, _ in leftovers], timeout=wait)


async def _release(leftovers: Leftovers) -> None:
    """Hand these runs back to other workers."""
    releases = [execution.release_after_stop() for _, execution in leftovers]
    await asyncio.gather(*releases, return_exceptions=True)
