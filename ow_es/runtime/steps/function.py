"""``ctx.step.run``: run a function once, retried per its policy, recorded in the log."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import typing
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ow_es import events as ev
from ow_es.durations import Duration, to_seconds, utcnow
from ow_es.errors import RetryAfter, StepTimeout
from ow_es.payload import error_info, from_json_value, to_json_value
from ow_es.retry import STEP_DEFAULT, RetryPolicy
from ow_es.runtime.steps.host import StepHost
from ow_es.runtime.unwind import Park, RunLost, Stale, step_failed

# A step still running after this long gets a `step_started` event (visible as running);
# quicker steps are recorded by their completion alone, saving a commit per step.
STARTED_GRACE_SECONDS = 0.05


# get_type_hints is slow (it evaluates annotations): once per function object.
_return_types: weakref.WeakKeyDictionary[Callable[..., Any], Any] = weakref.WeakKeyDictionary()


def _return_type(fn: Callable[..., Any]) -> Any:
    annotations = getattr(fn, "__annotations__", None)
    if not annotations or "return" not in annotations:
        return Any  # lambdas and unannotated functions: skip the costly get_type_hints
    try:
        return _return_types[fn]
    except (KeyError, TypeError):  # TypeError: not weakly referenceable (a C callable)
        pass
    hint = _evaluate_return_type(fn)
    with contextlib.suppress(TypeError):
        _return_types[fn] = hint
    return hint


def _evaluate_return_type(fn: Callable[..., Any]) -> Any:
    try:
        hint = typing.get_type_hints(fn).get("return", Any)
    except Exception:
        return Any
    if inspect.iscoroutinefunction(fn):
        return hint
    return Any if hint is None or hint is type(None) else hint


async def run_step(
    ex: StepHost,
    name: str,
    fn: Callable[[], Any],
    *,
    retry: RetryPolicy | None,
    timeout: Duration | None,
) -> Any:
    name = ex.unique_name(name)
    recorded = ex.history.completed.get(name)
    if recorded is not None:
        return from_json_value(recorded.output, _return_type(fn), f"step {name!r} result")
    failed = ex.history.final_failures.get(name)
    if failed is not None:
        raise step_failed(name, failed.error, failed.attempt)
    until = ex.history.retry_until.get(name)
    # Attempt numbers never repeat (one step_attempts row each); the budget counts only
    # failures since the last resume or body retry.
    attempt = ex.history.attempts.get(name, 0) + 1
    budget_used = ex.history.failures.get(name, 0) + 1
    if until is not None and until > utcnow():
        raise ex.parking(Park("retry", name, until, attempt=attempt))
    ex.check_active()  # replayed steps above may still answer; nothing new starts once parking
    await ex.ensure_lease()
    ex.begin_attempt(name, attempt)  # raises StepLimitExceeded past the run's limit
    seconds = None if timeout is None else to_seconds(timeout, "timeout")
    policy = retry or STEP_DEFAULT
    return await ex.tracked(_attempt(ex, name, fn, policy, seconds, attempt, budget_used))


async def _attempt(
    ex: StepHost,
    name: str,
    fn: Callable[[], Any],
    policy: RetryPolicy,
    timeout: float | None,
    attempt: int,
    budget_used: int,
) -> Any:
    worker = ex.worker_id
    started = utcnow()
    retryable = True
    try:
        result = await _call(ex, name, fn, timeout, attempt)
        retryable = False  # a result that cannot be stored would fail the same way again
        value = to_json_value(result, f"step {name!r} result", ex.max_payload_bytes)
    except (Park, RunLost, Stale, asyncio.CancelledError):
        raise
    except Exception as exc:
        error = error_info(exc)
        # RetryAfter parks the run without spending an attempt, up to max_suspensions times.
        suspends = isinstance(exc, RetryAfter) and retryable and _may_suspend(ex, name)
        final = not suspends and (
            not (retryable and policy.retryable(exc)) or budget_used >= policy.maximum_attempts
        )
        await ex.append(
            [
                ev.StepFailed(
                    step_name=name,
                    kind="function",
                    attempt=attempt,
                    error=error,
                    started_at=started,
                    final=final,
                    worker_id=worker,
                    counted=not suspends,
                )
            ]
        )
        if isinstance(exc, RetryAfter) and suspends:
            park = Park("retry", name, exc.until, attempt=attempt + 1, counted=False)
            raise ex.parking(park) from None
        if final:
            raise step_failed(name, error, budget_used) from None
        until = utcnow() + timedelta(seconds=policy.delay(attempt))
        raise ex.parking(Park("retry", name, until, attempt=attempt + 1)) from None
    await ex.append(
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


def _may_suspend(ex: StepHost, name: str) -> bool:
    return ex.history.suspensions.get(name, 0) < ex.max_suspensions


async def _call(
    ex: StepHost, name: str, fn: Callable[[], Any], timeout: float | None, attempt: int
) -> Any:
    if inspect.iscoroutinefunction(fn):
        task: asyncio.Future[Any] = asyncio.ensure_future(fn())
    else:
        # A thread cannot be stopped: a timed-out sync step keeps running in its thread.
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(_await_if_needed(loop.run_in_executor(ex.threads, fn)))
    done, _ = await asyncio.wait({task}, timeout=STARTED_GRACE_SECONDS)
    if not done:
        try:
            await ex.append(
                [
                    ev.StepStarted(
                        step_name=name,
                        kind="function",
                        attempt=attempt,
                        worker_id=ex.worker_id,
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


async def _await_if_needed(future: asyncio.Future[Any]) -> Any:
    result = await future
    if inspect.isawaitable(result):
        result = await result
    return result
