"""Replay one claimed run: re-run the workflow function from the top, answering recorded
steps from the history and recording new ones, until it finishes or parks."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import typing
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ow_es import events as ev
from ow_es.appender import GroupCommitter
from ow_es.context import Context, RunInfo, Steps
from ow_es.durations import Duration, to_seconds, utcnow
from ow_es.errors import (
    ConcurrencyError,
    InvalidTransition,
    StaleRun,
    StepFailed,
    StepLimitExceeded,
    StepTimeout,
    StoreUnavailable,
    ValidationError,
)
from ow_es.history import History
from ow_es.models import WorkflowRun
from ow_es.payload import error_info, from_json_value, to_json_value
from ow_es.retry import STEP_DEFAULT, RetryPolicy
from ow_es.store.base import Appended, AppendRequest, Outcome, Store
from ow_es.workflow import Workflow

log = logging.getLogger("ow_es.executor")

# A step still running after this long gets a `step_started` event (visible as running);
# quicker steps are recorded by their completion alone, saving a commit per step.
STARTED_GRACE_SECONDS = 0.05
_FAR_FUTURE = datetime.max.replace(tzinfo=utcnow().tzinfo)


class Park(BaseException):
    """Unwinds the workflow function so the run can park (sleep, wait, retry backoff).

    A BaseException, so ``except Exception`` in user code cannot swallow it by accident."""

    def __init__(self, kind: str, step: str, until: datetime | None, **detail: Any) -> None:
        super().__init__(kind, step)
        self.kind = kind
        self.step = step
        self.until = until
        self.detail = detail


class RunLost(BaseException):
    """This worker no longer owns the run (lease lost, run canceled): write nothing more."""


class _Stale(BaseException):
    """Events arrived that this replay has not seen (a signal, a child's end): replay again."""


@dataclass
class Settings:
    worker_id: str
    store: Store
    committer: GroupCommitter
    threads: Executor
    max_payload_bytes: int
    workflows: Callable[[str, str | None], Workflow[Any] | None]


def _return_type(fn: Callable[..., Any]) -> Any:
    annotations = getattr(fn, "__annotations__", None)
    if not annotations or "return" not in annotations:
        return Any  # lambdas and unannotated functions: skip the costly get_type_hints
    try:
        hint = typing.get_type_hints(fn).get("return", Any)
    except Exception:
        return Any
    if inspect.iscoroutinefunction(fn):
        return hint
    return Any if hint is None or hint is type(None) else hint


class Execution:
    def __init__(self, run: WorkflowRun, workflow: Workflow[Any], settings: Settings) -> None:
        self.run = run
        self.workflow = workflow
        self.settings = settings
        assert run.claim_token is not None
        self.token: str = run.claim_token
        self.seq = run.seq
        self.history = History()
        self._names: dict[str, int] = {}
        self._parks: list[Park] = []
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._limit_exceeded = False
        self._deadline_hit = False

    # -- driving ---------------------------------------------------------------------------

    async def execute(self) -> None:
        try:
            if self.run.seq == 2:  # created, then this claim: nothing to replay, skip a read
                self.history = History(seq=2, claim_token=self.token)
            else:
                events = await self.settings.store.read_run_events(self.run.id)
                self.history = History.of(events)
            if self.history.claim_token != self.token:
                log.warning("run %s: its history shows another claim; leaving it", self.run.id)
                return
            self.seq = max(self.seq, self.history.seq)
            await self._run_to_end()
        except RunLost:
            log.info("run %s: claim lost, dropping it", self.run.id)
        except _Stale:
            await self._release("new events arrived while it ran")

    async def _run_to_end(self) -> None:
        body = asyncio.ensure_future(self._call_body())
        timer = None
        if self.run.deadline_at is not None:
            delay = max(0.0, (self.run.deadline_at - utcnow()).total_seconds())
            timer = asyncio.get_running_loop().call_later(delay, self._deadline, body)
        try:
            outcome, value = await body
        except asyncio.CancelledError:
            if not self._deadline_hit:
                raise
            outcome, value = "deadline", None
        finally:
            if timer is not None:
                timer.cancel()
        await self._wait_idle()
        await self._finish(outcome, value)

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
            await self._append(
                [
                    self._failed_event(
                        {"type": "DeadlineExceeded", "message": "deadline exceeded"},
                        "deadline exceeded",
                    )
                ]
            )
        elif self._limit_exceeded:
            limit = self.workflow.max_step_attempts
            exc = StepLimitExceeded(f"the run made more than {limit} step attempts")
            await self._append([self._failed_event(error_info(exc))])
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
            await self._append([self._failed_event(error_info(exc))])
            return
        await self._append([ev.RunCompleted(output=value, worker_id=self.settings.worker_id)])

    async def _body_failed(self, exc: BaseException) -> None:
        policy = self.workflow.retry
        attempt = max(self.run.attempts, 1)
        if policy.retryable(exc) and attempt < policy.maximum_attempts:
            until = utcnow() + timedelta(seconds=policy.delay(attempt))
            await self._append(
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
            return
        await self._append([self._failed_event(error_info(exc))])

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
        await self._append([data], expect=True)

    async def _release(self, reason: str) -> None:
        with contextlib.suppress(RunLost, _Stale):
            await self._append([ev.RunReleased(worker_id=self.settings.worker_id, reason=reason)])

    async def release_after_stop(self) -> None:
        """The worker is stopping and this run did not finish in time: hand it back."""
        await self._release("worker stopped")

    # -- writing ---------------------------------------------------------------------------

    async def _append(self, events: list[ev.EventData], *, expect: bool = False) -> Appended:
        request = AppendRequest(
            run_id=self.run.id,
            events=events,
            claim_token=self.token,
            expected_seq=self.seq if expect else None,
        )
        outcome = await self._submit(request)
        if isinstance(outcome, StaleRun):
            raise _Stale()
        if isinstance(outcome, ConcurrencyError | InvalidTransition):
            raise RunLost()
        if not isinstance(outcome, Appended):
            raise outcome
        self.seq = max(self.seq, outcome.run.seq)
        return outcome

    async def _submit(self, request: AppendRequest) -> Outcome:
        """Append; after a commit whose outcome is unknown, re-read before trying again, so
        nothing is appended twice."""
        delay = 0.1
        for _ in range(8):
            try:
                return await self.settings.committer.submit(request)
            except StoreUnavailable as exc:
                log.warning("run %s: append outcome unknown (%s); re-reading", self.run.id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            with contextlib.suppress(StoreUnavailable):
                if await self._landed(request):
                    run = await self.settings.store.get_run(self.run.id)
                    assert run is not None
                    return Appended(run=run)
        raise RunLost()

    async def _landed(self, request: AppendRequest) -> bool:
        events = await self.settings.store.read_run_events(self.run.id)
        mine = [ev.to_dict(e) for e in request.events]
        newer = [e for e in events if e.seq > self.seq]
        for start in range(len(newer) - len(mine) + 1):
            window = newer[start : start + len(mine)]
            if [e.data for e in window] == mine:
                return True
        return False

    # -- steps -----------------------------------------------------------------------------

    def _unique(self, name: str) -> str:
        """Repeated names get ':1', ':2'... in call order."""
        if not isinstance(name, str) or not name:
            raise ValueError("a step needs a non-empty name")
        count = self._names.get(name, 0)
        self._names[name] = count + 1
        return name if count == 0 else f"{name}:{count}"

    def _check_active(self) -> None:
        """Once the run is parking, no new step starts (e.g. after gather(return_exceptions))."""
        if self._parks:
            raise self._parks[0]

    def _parking(self, park: Park) -> Park:
        self._parks.append(park)
        return park

    async def _tracked(self, coro: Any) -> Any:
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

    async def run_step(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        retry: RetryPolicy | None,
        timeout: Duration | None,
    ) -> Any:
        self._check_active()
        name = self._unique(name)
        recorded = self.history.completed.get(name)
        if recorded is not None:
            return from_json_value(recorded.output, _return_type(fn), f"step {name!r} result")
        failed = self.history.final_failures.get(name)
        if failed is not None:
            raise _step_failed(name, failed.error, failed.attempt)
        until = self.history.retry_until.get(name)
        # Attempt numbers never repeat (one step_attempts row each); the budget counts only
        # failures since the last resume or body retry.
        attempt = self.history.attempts.get(name, 0) + 1
        budget_used = self.history.failures.get(name, 0) + 1
        if until is not None and until > utcnow():
            raise self._parking(Park("retry", name, until, attempt=attempt))
        if self.history.function_attempts >= self.workflow.max_step_attempts:
            self._limit_exceeded = True
            raise StepLimitExceeded(f"step {name!r}: the run reached its step attempt limit")
        self.history.function_attempts += 1
        seconds = None if timeout is None else to_seconds(timeout, "timeout")
        self.history.attempts[name] = attempt
        policy = retry or STEP_DEFAULT
        return await self._tracked(self._attempt(name, fn, policy, seconds, attempt, budget_used))

    async def _attempt(
        self,
        name: str,
        fn: Callable[[], Any],
        policy: RetryPolicy,
        timeout: float | None,
        attempt: int,
        budget_used: int,
    ) -> Any:
        worker = self.settings.worker_id
        started = utcnow()
        try:
            result = await self._call(name, fn, timeout, attempt)
            value = to_json_value(result, f"step {name!r} result", self.settings.max_payload_bytes)
        except (Park, RunLost, _Stale, asyncio.CancelledError):
            raise
        except Exception as exc:
            error = error_info(exc)
            final = not policy.retryable(exc) or budget_used >= policy.maximum_attempts
            await self._append(
                [
                    ev.StepFailed(
                        step_name=name,
                        kind="function",
                        attempt=attempt,
                        error=error,
                        started_at=started,
                        final=final,
                        worker_id=worker,
                    )
                ]
            )
            if final:
                raise _step_failed(name, error, budget_used) from None
            until = utcnow() + timedelta(seconds=policy.delay(attempt))
            raise self._parking(Park("retry", name, until, attempt=attempt + 1)) from None
        await self._append(
            [
                ev.StepCompleted(
                    step_name=name,
                    kind="function",
                    attempt=attempt,
                    output=value,
                    started_at=started,
                    worker_id=worker,
                )
            ]
        )
        return from_json_value(value, _return_type(fn), f"step {name!r} result")

    async def _call(
        self, name: str, fn: Callable[[], Any], timeout: float | None, attempt: int
    ) -> Any:
        if inspect.iscoroutinefunction(fn):
            task: asyncio.Future[Any] = asyncio.ensure_future(fn())
        else:
            # A thread cannot be stopped: a timed-out sync step keeps running in its thread.
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(
                _await_if_needed(loop.run_in_executor(self.settings.threads, fn))
            )
        done, _ = await asyncio.wait({task}, timeout=STARTED_GRACE_SECONDS)
        if not done:
            try:
                await self._append(
                    [
                        ev.StepStarted(
                            step_name=name,
                            kind="function",
                            attempt=attempt,
                            worker_id=self.settings.worker_id,
                        )
                    ]
                )
            except BaseException:
                task.cancel()  # the run is no longer ours: do not leave the step running
                raise
        remaining = None if timeout is None else max(0.0, timeout - STARTED_GRACE_SECONDS)
        try:
            return await asyncio.wait_for(task, remaining if not done else None)
        except TimeoutError:
            if task.done() and not task.cancelled():
                raise  # the step itself raised TimeoutError
            raise StepTimeout(f"step {name!r} timed out after {timeout}s") from None

    async def sleep(
        self, name: str, *, duration: Duration | None = None, until: datetime | None = None
    ) -> None:
        self._check_active()
        name = self._unique(name)
        if name in self.history.completed:
            return
        started = self.history.started.get(name)
        if started is not None and isinstance(started.input, dict):
            wake = datetime.fromisoformat(started.input["until"])
            started_at = self.history.started_at[name]
        else:
            wake = (
                until
                if until is not None
                else utcnow() + timedelta(seconds=to_seconds(duration or 0, "sleep duration"))
            )
            if wake.tzinfo is None:
                raise ValueError("sleep_until needs a timezone-aware datetime")
            appended = await self._append(
                [
                    ev.StepStarted(
                        step_name=name,
                        kind="sleep",
                        attempt=1,
                        input={"until": wake.isoformat()},
                        worker_id=self.settings.worker_id,
                    )
                ]
            )
            started_at = appended.run.updated_at
        if wake <= utcnow():
            await self._append(
                [
                    ev.StepCompleted(
                        step_name=name,
                        kind="sleep",
                        attempt=1,
                        started_at=started_at,
                        worker_id=self.settings.worker_id,
                    )
                ]
            )
            return
        raise self._parking(Park("sleep", name, wake))

    async def wait_for_signal(
        self, signal: str, *, timeout: Duration | None, name: str | None
    ) -> Any:
        self._check_active()
        name = self._unique(name or signal)
        completed = self.history.completed.get(name)
        if completed is not None:
            return completed.output
        received = self.history.signals.get(name)
        if received is not None:
            return received.data
        started = self.history.started.get(name)
        if started is None:
            wake = (
                None
                if timeout is None
                else utcnow() + timedelta(seconds=to_seconds(timeout, "timeout"))
            )
            appended = await self._append(
                [
                    ev.StepStarted(
                        step_name=name,
                        kind="signal_wait",
                        attempt=1,
                        signal_name=signal,
                        input={"until": wake.isoformat() if wake else None},
                        worker_id=self.settings.worker_id,
                    )
                ]
            )
            started_at = appended.run.updated_at
        else:
            raw = started.input.get("until") if isinstance(started.input, dict) else None
            wake = datetime.fromisoformat(raw) if raw else None
            started_at = self.history.started_at[name]
        if wake is not None and wake <= utcnow():
            # expect=True: a signal delivered meanwhile makes this stale instead of lost.
            await self._append(
                [
                    ev.StepCompleted(
                        step_name=name,
                        kind="signal_wait",
                        attempt=1,
                        output=None,
                        signal_name=signal,
                        started_at=started_at,
                        worker_id=self.settings.worker_id,
                    )
                ],
                expect=True,
            )
            return None
        raise self._parking(Park("signal", name, wake, signal=signal))

    async def send_signal(self, signal: str, data: Any, *, name: str | None) -> list[str]:
        self._check_active()
        name = self._unique(name or f"send:{signal}")
        completed = self.history.completed.get(name)
        if completed is not None:
            return list(completed.output or [])
        value = to_json_value(data, f"signal {signal!r} data", self.settings.max_payload_bytes)
        sender = AppendRequest(
            run_id=self.run.id,
            claim_token=self.token,
            events=[
                ev.StepCompleted(
                    step_name=name,
                    kind="signal_send",
                    attempt=1,
                    output=[],
                    signal_name=signal,
                    started_at=utcnow(),
                    worker_id=self.settings.worker_id,
                )
            ],
        )
        try:
            delivered = await self._tracked(
                self.settings.store.run(
                    "sending a signal",
                    lambda tx: tx.deliver_signal(
                        signal, value, None, sender=sender, sender_step=name
                    ),
                )
            )
        except (ConcurrencyError, InvalidTransition):
            raise RunLost() from None
        run = await self.settings.store.get_run(self.run.id)
        if run is not None:
            self.seq = max(self.seq, run.seq)
        return list(delivered)

    async def run_child(
        self,
        workflow: Workflow[Any] | str,
        input: Any,
        *,
        version: str | None,
        timeout: Duration | None,
        name: str | None,
    ) -> Any:
        self._check_active()
        spec = workflow if isinstance(workflow, Workflow) else None
        wf_name = spec.name if spec else str(workflow)
        version = version if version is not None else (spec.version if spec else None)
        output_type = spec.output_type if spec else Any
        name = self._unique(name or f"child:{wf_name}")
        completed = self.history.completed.get(name)
        if completed is not None:
            return from_json_value(completed.output, output_type, f"child {wf_name!r} output")
        failed = self.history.final_failures.get(name)
        if failed is not None:
            raise _step_failed(name, failed.error, failed.attempt)
        started = self.history.started.get(name)
        finished = self.history.child_finished.get(name)
        if finished is not None and started is not None:
            return await self._child_result(name, started, finished, output_type)
        if started is None:
            child_id, wake = await self._start_child(name, wf_name, version, input, spec, timeout)
        else:
            child_id = started.child_run_id or ""
            raw = started.input.get("until") if isinstance(started.input, dict) else None
            wake = datetime.fromisoformat(raw) if raw else None
            if wake is not None and wake <= utcnow():
                error = error_info(StepTimeout(f"child run {child_id} did not finish in time"))
                await self._append(
                    [
                        ev.StepFailed(
                            step_name=name,
                            kind="workflow",
                            attempt=1,
                            error=error,
                            final=True,
                            started_at=self.history.started_at[name],
                            child_run_id=child_id,
                            worker_id=self.settings.worker_id,
                        )
                    ],
                    expect=True,
                )
                raise _step_failed(name, error, 1)
        raise self._parking(Park("child", name, wake, child_run_id=child_id))

    async def _start_child(
        self,
        name: str,
        wf_name: str,
        version: str | None,
        input: Any,
        spec: Workflow[Any] | None,
        timeout: Duration | None,
    ) -> tuple[str, datetime | None]:
        schema = spec.input_type if spec and spec.takes_input else Any
        value = to_json_value(
            input, f"child {wf_name!r} input", self.settings.max_payload_bytes, schema
        )
        now = utcnow()
        wake = None if timeout is None else now + timedelta(seconds=to_seconds(timeout, "timeout"))
        create = AppendRequest(
            run_id=uuid.uuid4().hex,
            events=[
                ev.RunCreated(
                    workflow_name=wf_name,
                    version=version,
                    input=value,
                    # The key makes the child exactly-once across replays of this step.
                    idempotency_key=f"{self.run.id}/{name}",
                    parent_run_id=self.run.id,
                    parent_step_name=name,
                    available_at=now,
                )
            ],
        )
        created = await self.settings.store.append([create])
        child = created[0]
        if not isinstance(child, Appended):
            raise child
        child_id = child.run.id
        await self._append(
            [
                ev.StepStarted(
                    step_name=name,
                    kind="workflow",
                    attempt=1,
                    child_run_id=child_id,
                    input={"until": wake.isoformat() if wake else None},
                    worker_id=self.settings.worker_id,
                ),
                ev.ChildStarted(
                    step_name=name,
                    child_run_id=child_id,
                    workflow_name=wf_name,
                    worker_id=self.settings.worker_id,
                ),
            ]
        )
        if child.run.is_terminal:
            raise _Stale()  # it finished before we recorded it: replay to pick up its result
        return child_id, wake

    async def _child_result(
        self, name: str, started: ev.StepStarted, finished: ev.ChildFinished, output_type: Any
    ) -> Any:
        common: dict[str, Any] = {
            "step_name": name,
            "kind": "workflow",
            "attempt": 1,
            "started_at": self.history.started_at[name],
            "child_run_id": finished.child_run_id,
            "worker_id": self.settings.worker_id,
        }
        if finished.status == "completed":
            await self._append([ev.StepCompleted(output=finished.output, **common)])
            return from_json_value(finished.output, output_type, f"child {name!r} output")
        error = finished.error or {
            "type": "WorkflowCanceled",
            "message": f"child run {finished.child_run_id} was {finished.status}",
        }
        await self._append([ev.StepFailed(error=error, final=True, **common)])
        raise _step_failed(name, error, 1)


def _step_failed(name: str, error: dict[str, Any], attempts: int) -> StepFailed:
    return StepFailed(
        name, str(error.get("type", "Error")), str(error.get("message", "")), attempts
    )


async def _await_if_needed(future: asyncio.Future[Any]) -> Any:
    result = await future
    if inspect.isawaitable(result):
        result = await result
    return result
