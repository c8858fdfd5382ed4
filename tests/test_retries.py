"""Retries: steps retry per their policy, completed steps never run again, workflow bodies
are terminal by default; attempts count failures, not claims (sleeps, wake-ups and lease
takeovers spend no budget)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import ow_es
from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.retry import STEP_DEFAULT, WORKFLOW_DEFAULT
from ow_es.store import Appended, AppendRequest
from tests.support.databases import ClientFactory
from tests.support.runs import event_types, parked
from tests.support.waiting import eventually
from tests.support.workers import running_worker

FAST = ow_es.RetryPolicy(initial_interval="1ms", maximum_interval="1ms")


def _fast(attempts: int, **options: Any) -> ow_es.RetryPolicy:
    return ow_es.RetryPolicy(
        initial_interval="1ms", maximum_interval="1ms", maximum_attempts=attempts, **options
    )


async def test_only_the_failed_step_reruns(ow: ow_es.OpenWorkflow) -> None:
    calls = {"a": 0, "b": 0, "c": 0}
    seen_errors: list[BaseException] = []

    @ow.workflow(name="partial-failure")
    async def partial_failure(ctx: ow_es.Context) -> list[object]:
        async def a() -> str:
            calls["a"] += 1
            return "A"

        async def b() -> str:
            calls["b"] += 1
            if calls["b"] < 3:
                raise ConnectionError(f"flaky #{calls['b']}")
            return "B"

        async def c() -> str:
            calls["c"] += 1
            return "C"

        first = await ctx.step.run("a", a)
        try:
            second = await ctx.step.run("b", b, retry=FAST)
        except Exception as exc:  # the workflow never sees an intermediate failure
            seen_errors.append(exc)
            raise
        third = await ctx.step.run("c", c)
        return [first, second, third]

    await ow.connect()
    async with running_worker(ow):
        handle = await partial_failure.start()
        assert await handle.result(timeout=15) == ["A", "B", "C"]
    assert calls == {"a": 1, "b": 3, "c": 1}
    assert seen_errors == []
    steps = await ow.store.step_attempts(handle.run_id)
    rows = sorted((s.step_name, s.attempt, s.status) for s in steps)
    assert rows == [
        ("a", 1, "completed"),
        ("b", 1, "failed"),
        ("b", 2, "failed"),
        ("b", 3, "completed"),
        ("c", 1, "completed"),
    ]
    failed = [s for s in steps if s.status == "failed"]
    assert all(s.error and s.error["type"] == "ConnectionError" for s in failed)
    run = await handle.status()
    assert run.attempts == 1  # step retries are not body attempts
    types = await event_types(ow, handle.run_id)
    assert types.count("retry_scheduled") == 2
    assert types.count("run_claimed") == 3


async def test_step_default_is_ten_attempts(ow: ow_es.OpenWorkflow) -> None:
    assert STEP_DEFAULT.maximum_attempts == 10
    assert ow_es.RetryPolicy().maximum_attempts == 10
    calls: list[int] = []

    @ow.workflow(name="always-fails")
    async def always_fails(ctx: ow_es.Context) -> dict[str, object]:
        def broken() -> None:
            calls.append(1)
            raise OSError("disk on fire")

        try:
            await ctx.step.run("broken", broken, retry=ow_es.RetryPolicy(initial_interval="1ms"))
        except ow_es.StepFailed as exc:
            return {"type": exc.error_type, "attempts": exc.attempts, "message": exc.message}
        return {}

    await ow.connect()
    async with running_worker(ow):
        handle = await always_fails.start()
        out = await handle.result(timeout=30)
    assert out == {"type": "OSError", "attempts": 10, "message": "disk on fire"}
    assert len(calls) == 10
    steps = await ow.store.step_attempts(handle.run_id)
    assert sorted(s.attempt for s in steps) == list(range(1, 11))
    assert all(s.status == "failed" for s in steps)


async def test_step_without_a_policy_retries_after_the_default_interval(
    ow: ow_es.OpenWorkflow,
) -> None:
    calls: list[float] = []

    @ow.workflow(name="default-policy")
    async def default_policy(ctx: ow_es.Context) -> str:
        async def once_broken() -> str:
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise RuntimeError("first call fails")
            return "second call works"

        return await ctx.step.run("once-broken", once_broken)

    await ow.connect()
    async with running_worker(ow):
        handle = await default_policy.start()

        async def parked() -> bool:
            return (await handle.status()).waiting_for is not None

        await eventually(parked)
        run = await handle.status()
        # Parked between attempts: still running, no owner, the reason shown.
        assert run.status == "running"
        assert run.worker_id is None and run.lease_until is None
        assert run.waiting_for is not None
        assert run.waiting_for["kind"] == "retry"
        assert run.waiting_for["step"] == "once-broken"
        assert await handle.result(timeout=15) == "second call works"
    assert len(calls) == 2
    assert 0.9 <= calls[1] - calls[0] < 5
    events = await ow.history(handle.run_id)
    failed = next(e for e in events if e.type == "step_failed")
    scheduled = next(e for e in events if e.type == "retry_scheduled")
    assert failed.data["final"] is False
    delay = (datetime.fromisoformat(scheduled.data["until"]) - failed.created_at).total_seconds()
    assert delay == pytest.approx(STEP_DEFAULT.delay(1), abs=0.25)
    assert STEP_DEFAULT.delay(1) == 1.0


async def test_backoff_follows_the_policy(ow: ow_es.OpenWorkflow) -> None:
    policy = ow_es.RetryPolicy(
        initial_interval="100ms",
        backoff_coefficient=3.0,
        maximum_interval="500ms",
        maximum_attempts=4,
    )
    assert [policy.delay(n) for n in (1, 2, 3)] == pytest.approx([0.1, 0.3, 0.5])

    @ow.workflow(name="backoff")
    async def backoff(ctx: ow_es.Context) -> int:
        async def never() -> None:
            raise RuntimeError("never works")

        try:
            await ctx.step.run("never", never, retry=policy)
        except ow_es.StepFailed as exc:
            return exc.attempts
        return 0

    await ow.connect()
    async with running_worker(ow):
        handle = await backoff.start()
        assert await handle.result(timeout=15) == 4
    events = await ow.history(handle.run_id)
    failures = [e for e in events if e.type == "step_failed"]
    scheduled = [e for e in events if e.type == "retry_scheduled"]
    assert [e.data["attempt"] for e in failures] == [1, 2, 3, 4]
    assert [e.data["final"] for e in failures] == [False, False, False, True]
    assert [e.data["attempt"] for e in scheduled] == [2, 3, 4]
    for failure, retry, expected in zip(failures, scheduled, (0.1, 0.3, 0.5), strict=False):
        until = datetime.fromisoformat(retry.data["until"])
        delay = (until - failure.created_at).total_seconds()
        assert expected - 0.01 <= delay <= expected + 0.12, (expected, delay)
    # Each later attempt started no earlier than its retry time.
    for retry, later in zip(scheduled, failures[1:], strict=True):
        until = datetime.fromisoformat(retry.data["until"])
        started = datetime.fromisoformat(later.data["started_at"])
        assert started >= until


async def test_step_policy_override(ow: ow_es.OpenWorkflow) -> None:
    calls: list[int] = []

    @ow.workflow(name="override")
    async def override(ctx: ow_es.Context) -> None:
        async def broken() -> None:
            calls.append(1)
            raise KeyError("missing")

        await ctx.step.run("broken", broken, retry=_fast(3))

    await ow.connect()
    async with running_worker(ow):
        handle = await override.start()
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await handle.result(timeout=15)
    assert len(calls) == 3
    # Uncaught StepFailed fails the run with it.
    assert info.value.error_type == "StepFailed"
    assert "broken" in info.value.error_message
    assert "KeyError" in info.value.error_message
    steps = await ow.store.step_attempts(handle.run_id)
    assert sorted((s.attempt, s.status) for s in steps) == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
    ]


async def test_workflow_body_error_is_terminal_by_default(ow: ow_es.OpenWorkflow) -> None:
    assert WORKFLOW_DEFAULT.maximum_attempts == 1
    calls: list[int] = []

    @ow.workflow(name="body-fails")
    async def body_fails(ctx: ow_es.Context) -> None:
        calls.append(ctx.run.attempt)
        raise LookupError("the body broke")

    await ow.connect()
    async with running_worker(ow):
        handle = await body_fails.start()
        with pytest.raises(ow_es.WorkflowFailed):
            await handle.result(timeout=15)
        await asyncio.sleep(0.2)  # a (wrong) retry would have run by now
    assert calls == [1]
    run = await handle.status()
    assert run.status == "failed"
    assert run.attempts == 1
    assert run.error is not None
    assert run.error["type"] == "LookupError"
    assert run.error["message"] == "the body broke"
    assert "Traceback" in run.error["traceback"]
    assert "body_fails" in run.error["traceback"]
    types = await event_types(ow, handle.run_id)
    assert "retry_scheduled" not in types
    assert types[-1] == "run_failed"


async def test_workflow_retry_policy_retries_the_body(ow: ow_es.OpenWorkflow) -> None:
    attempts_seen: list[int] = []
    once_calls: list[int] = []

    @ow.workflow(name="body-retries", retry=_fast(3))
    async def body_retries(ctx: ow_es.Context) -> int:
        async def once() -> int:
            once_calls.append(1)
            return 5

        value = await ctx.step.run("once", once)
        attempts_seen.append(ctx.run.attempt)
        if ctx.run.attempt < 3:
            raise RuntimeError(f"attempt {ctx.run.attempt} fails")
        return value + ctx.run.attempt

    await ow.connect()
    async with running_worker(ow):
        handle = await body_retries.start()
        assert await handle.result(timeout=15) == 8
    assert attempts_seen == [1, 2, 3]
    assert once_calls == [1]  # a completed step is not re-run by a body retry
    run = await handle.status()
    assert run.attempts == 3
    events = await ow.history(handle.run_id)
    body_retries_ = [e for e in events if e.type == "retry_scheduled"]
    assert [e.data["step_name"] for e in body_retries_] == [None, None]
    assert [e.data["attempt"] for e in body_retries_] == [2, 3]


async def test_workflow_retry_budget_runs_out(ow: ow_es.OpenWorkflow) -> None:
    attempts_seen: list[int] = []

    @ow.workflow(name="body-gives-up", retry=_fast(2))
    async def body_gives_up(ctx: ow_es.Context) -> None:
        attempts_seen.append(ctx.run.attempt)
        raise RuntimeError("always")

    await ow.connect()
    async with running_worker(ow):
        handle = await body_gives_up.start()
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await handle.result(timeout=15)
    assert attempts_seen == [1, 2]
    assert info.value.error_type == "RuntimeError"
    assert (await handle.status()).attempts == 2


async def test_non_retryable_error_fails_the_step_at_once(ow: ow_es.OpenWorkflow) -> None:
    calls = {"nonretryable": 0, "listed": 0}

    class Fatal(ow_es.NonRetryableError):
        pass

    class CardDeclined(Exception):
        pass

    @ow.workflow(name="fatal")
    async def fatal(ctx: ow_es.Context) -> list[object]:
        async def nope() -> None:
            calls["nonretryable"] += 1
            raise Fatal("do not retry me")

        async def declined() -> None:
            calls["listed"] += 1
            raise CardDeclined("declined")

        out: list[object] = []
        try:
            await ctx.step.run("nope", nope, retry=FAST)
        except ow_es.StepFailed as exc:
            out.append([exc.error_type, exc.attempts])
        try:
            await ctx.step.run("declined", declined, retry=_fast(10, non_retryable=(CardDeclined,)))
        except ow_es.StepFailed as exc:
            out.append([exc.error_type, exc.attempts])
        return out

    await ow.connect()
    async with running_worker(ow):
        handle = await fatal.start()
        assert await handle.result(timeout=15) == [["Fatal", 1], ["CardDeclined", 1]]
    assert calls == {"nonretryable": 1, "listed": 1}
    events = await ow.history(handle.run_id)
    failures = [e for e in events if e.type == "step_failed"]
    assert [e.data["final"] for e in failures] == [True, True]
    assert not [e for e in events if e.type == "retry_scheduled"]


async def test_caught_step_failure_lets_the_workflow_go_on(ow: ow_es.OpenWorkflow) -> None:
    fallback_calls: list[int] = []

    @ow.workflow(name="fallback")
    async def fallback(ctx: ow_es.Context) -> dict[str, object]:
        async def primary() -> str:
            raise TimeoutError("upstream slow")

        async def secondary() -> str:
            fallback_calls.append(1)
            return "from-secondary"

        try:
            value = await ctx.step.run("primary", primary, retry=_fast(2))
        except ow_es.StepFailed as exc:
            caught = {
                "step": exc.step_name,
                "type": exc.error_type,
                "message": exc.message,
                "attempts": exc.attempts,
            }
            value = await ctx.step.run("secondary", secondary)
            return {"value": value, "caught": caught}
        return {"value": value}

    await ow.connect()
    async with running_worker(ow):
        handle = await fallback.start()
        out = await handle.result(timeout=15)
    assert out == {
        "value": "from-secondary",
        "caught": {
            "step": "primary",
            "type": "TimeoutError",
            "message": "upstream slow",
            "attempts": 2,
        },
    }
    assert fallback_calls == [1]
    assert (await handle.status()).status == "completed"


async def test_step_timeout_is_a_retryable_failure(ow: ow_es.OpenWorkflow) -> None:
    calls: list[int] = []

    @ow.workflow(name="timeouts")
    async def timeouts(ctx: ow_es.Context) -> list[object]:
        async def slow() -> str:
            calls.append(1)
            await asyncio.sleep(10)
            return "never"

        try:
            await ctx.step.run("slow", slow, retry=_fast(2), timeout="150ms")
        except ow_es.StepFailed as exc:
            return [exc.error_type, exc.attempts]
        return []

    await ow.connect()
    started = time.monotonic()
    async with running_worker(ow):
        handle = await timeouts.start()
        assert await handle.result(timeout=15) == ["StepTimeout", 2]
    assert time.monotonic() - started < 8
    assert len(calls) == 2


async def test_body_retry_gives_failed_steps_a_fresh_budget_and_keeps_every_attempt(
    ow: ow_es.OpenWorkflow,
) -> None:
    calls: list[int] = []

    @ow.workflow(name="second-chance", retry=_fast(2))
    async def second_chance(ctx: ow_es.Context) -> list[int]:
        async def flaky() -> int:
            calls.append(ctx.run.attempt)
            if len(calls) <= 2:
                raise RuntimeError(f"call {len(calls)} fails")
            return len(calls)

        value = await ctx.step.run("flaky", flaky, retry=_fast(2))  # uncaught on attempt 1
        return [value, ctx.run.attempt]

    await ow.connect()
    async with running_worker(ow):
        handle = await second_chance.start()
        assert await handle.result(timeout=15) == [3, 2]
    assert calls == [1, 1, 2]
    # Three attempts were made; the log has them all, and so must the step_attempts table.
    events = await ow.history(handle.run_id)
    attempts = [e for e in events if e.type in ("step_failed", "step_completed")]
    assert len(attempts) == 3
    steps = await ow.store.step_attempts(handle.run_id)
    assert len(steps) == 3, [(s.step_name, s.attempt, s.status) for s in steps]
    assert sorted(s.status for s in steps) == ["completed", "failed", "failed"]


async def test_sleeps_between_failures_spend_no_budget(ow: ow_es.OpenWorkflow) -> None:
    calls = {"flaky1": 0, "flaky2": 0}
    attempts_seen: list[int] = []

    @ow.workflow(name="sleepy-flaky", retry=_fast(2))
    async def sleepy_flaky(ctx: ow_es.Context) -> str:
        def flaky(name: str) -> Callable[[], Awaitable[str]]:
            async def fn() -> str:
                calls[name] += 1
                if calls[name] <= 2:
                    raise RuntimeError(f"{name} failure {calls[name]}")
                return name

            return fn

        await ctx.step.sleep("nap-1", "30ms")
        one = await ctx.step.run("flaky1", flaky("flaky1"), retry=_fast(3))
        await ctx.step.sleep("nap-2", "30ms")
        await ctx.step.sleep("nap-3", "30ms")
        two = await ctx.step.run("flaky2", flaky("flaky2"), retry=_fast(3))
        await ctx.step.sleep("nap-4", "30ms")
        attempts_seen.append(ctx.run.attempt)
        if ctx.run.attempt == 1:
            raise RuntimeError("the body fails once")
        return f"{one}+{two}"

    await ow.connect()
    async with running_worker(ow):
        handle = await sleepy_flaky.start()
        assert await handle.result(timeout=20) == "flaky1+flaky2"
    # Each step spent exactly its three attempts, the body its two, despite many claims.
    assert calls == {"flaky1": 3, "flaky2": 3}
    assert attempts_seen == [1, 2]
    run = await handle.status()
    assert run.attempts == 2
    types = await event_types(ow, handle.run_id)
    assert types.count("run_claimed") >= 9
    assert types.count("run_sleeping") >= 4


async def test_lease_takeovers_spend_no_budget(ow: ow_es.OpenWorkflow) -> None:
    """A run whose lease was taken over several times (crashed owners) still gets its whole
    body and step budgets, and ``ctx.run.attempt`` stays 1."""
    attempts_seen: list[int] = []
    calls: list[int] = []

    @ow.workflow(name="churned")
    async def churned(ctx: ow_es.Context) -> int:
        attempts_seen.append(ctx.run.attempt)

        async def flaky() -> int:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("the first real attempt fails")
            return len(calls)

        return await ctx.step.run("flaky", flaky, retry=_fast(2))

    await ow.connect()
    handle = await churned.start()
    keys = [("churned", None)]
    tokens: list[str] = []
    for ghost in ("ghost-1", "ghost-2", "ghost-3"):
        got: list[ow_es.WorkflowRun] = []

        async def claimed(ghost: str = ghost, got: list[ow_es.WorkflowRun] = got) -> bool:
            got.extend(await ow.store.claim(ghost, keys, 1, 0.1))
            return bool(got)

        await eventually(claimed, timeout=5)
        tokens.append(str(got[0].claim_token))
    assert len(set(tokens)) == 3
    row = await handle.status()
    assert row.attempts == 1

    await asyncio.sleep(0.15)  # the last ghost's lease expires too
    async with running_worker(ow):
        assert await handle.result(timeout=15) == 2
    assert set(attempts_seen) == {1}
    assert len(calls) == 2
    run = await handle.status()
    assert run.attempts == 1
    claims = [e for e in await ow.history(handle.run_id) if e.type == "run_claimed"]
    assert len(claims) >= 5


async def test_failures_recorded_by_crashed_owners_count_and_claims_do_not(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Two owners each recorded a failed attempt of a step and then vanished; a third gets
    exactly the one attempt left of three."""
    calls: list[int] = []

    @ow.workflow(name="inherited")
    async def inherited(ctx: ow_es.Context) -> str:
        async def step() -> str:
            calls.append(1)
            return "third time lucky"

        return await ctx.step.run("step", step, retry=_fast(3))

    await ow.connect()
    handle = await inherited.start()
    keys = [("inherited", None)]
    for attempt, ghost in ((1, "ghost-1"), (2, "ghost-2")):
        got: list[ow_es.WorkflowRun] = []

        async def claimed(ghost: str = ghost, got: list[ow_es.WorkflowRun] = got) -> bool:
            got.extend(await ow.store.claim(ghost, keys, 1, 0.15))
            return bool(got)

        await eventually(claimed, timeout=5)
        (outcome,) = await ow.store.append(
            [
                AppendRequest(
                    run_id=handle.run_id,
                    claim_token=got[0].claim_token,
                    events=[
                        ev.StepFailed(
                            step_name="step",
                            kind="function",
                            attempt=attempt,
                            error={"type": "RuntimeError", "message": "lost", "traceback": ""},
                            started_at=utcnow(),
                            final=False,
                            worker_id=ghost,
                        )
                    ],
                )
            ]
        )
        assert isinstance(outcome, Appended)
    await asyncio.sleep(0.2)
    async with running_worker(ow):
        assert await handle.result(timeout=15) == "third time lucky"
    assert calls == [1]
    steps = await ow.store.step_attempts(handle.run_id)
    assert sorted((s.attempt, s.status) for s in steps) == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]


async def test_crashed_owners_use_up_a_budget_only_by_failures(ow: ow_es.OpenWorkflow) -> None:
    """With the budget spent by recorded failures, the next owner does not call the step."""
    calls: list[int] = []

    @ow.workflow(name="spent")
    async def spent(ctx: ow_es.Context) -> list[object]:
        async def step() -> str:
            calls.append(1)
            return "should not run"

        try:
            await ctx.step.run("step", step, retry=_fast(1))
        except ow_es.StepFailed as exc:
            return [exc.error_type, exc.attempts]
        return []

    await ow.connect()
    handle = await spent.start()
    (run,) = await ow.store.claim("ghost", [("spent", None)], 1, 0.15)
    (outcome,) = await ow.store.append(
        [
            AppendRequest(
                run_id=handle.run_id,
                claim_token=run.claim_token,
                events=[
                    ev.StepFailed(
                        step_name="step",
                        kind="function",
                        attempt=1,
                        error={"type": "ValueError", "message": "bad", "traceback": ""},
                        started_at=utcnow(),
                        final=True,
                        worker_id="ghost",
                    )
                ],
            )
        ]
    )
    assert isinstance(outcome, Appended)
    await asyncio.sleep(0.2)
    async with running_worker(ow):
        assert await handle.result(timeout=15) == ["ValueError", 1]
    assert calls == []


async def test_retry_after_parks_the_run_without_spending_an_attempt(
    ow: ow_es.OpenWorkflow,
) -> None:
    """A step that raises RetryAfter twice (a remote API's 429) and then succeeds completes
    under a policy of a single attempt: each suspension parks the run until the given time,
    is recorded as a failed attempt of type RetryAfter, and spends nothing of the budget."""
    calls: list[float] = []

    @ow.workflow(name="polite")
    async def polite(ctx: ow_es.Context) -> str:
        async def call_api() -> str:
            calls.append(time.monotonic())
            if len(calls) < 3:
                raise ow_es.RetryAfter("200ms")
            return "ok"

        return await ctx.step.run("api", call_api, retry=ow_es.RetryPolicy(maximum_attempts=1))

    await ow.connect()
    async with running_worker(ow):
        handle = await polite.start()
        await eventually(lambda: parked(ow, handle.run_id, "retry", step="api"), 10)
        assert await handle.result(timeout=15) == "ok"
    assert len(calls) == 3
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(calls))  # it waited
    events = await ow.history(handle.run_id)
    failures = [e.data for e in events if e.type == "step_failed"]
    assert [(f["error"]["type"], f["counted"], f["final"]) for f in failures] == [
        ("RetryAfter", False, False),
        ("RetryAfter", False, False),
    ]
    retries = [e.data for e in events if e.type == "retry_scheduled"]
    assert [r["counted"] for r in retries] == [False, False]
    rows = await ow.store.step_attempts(handle.run_id)
    assert [(r.attempt, r.status) for r in rows] == [(1, "failed"), (2, "failed"), (3, "completed")]


async def test_retry_after_counts_as_a_failure_past_max_suspensions(
    make_client: ClientFactory,
) -> None:
    ow = await make_client(max_suspensions=2)

    @ow.workflow(name="throttled")
    async def throttled(ctx: ow_es.Context) -> None:
        async def call_api() -> None:
            raise ow_es.RetryAfter(datetime.now(UTC) + timedelta(milliseconds=50))

        await ctx.step.run("api", call_api, retry=ow_es.RetryPolicy(maximum_attempts=1))

    await ow.connect()
    async with running_worker(ow):
        handle = await throttled.start()
        with pytest.raises(ow_es.WorkflowFailed) as info:
            await handle.result(timeout=15)
    assert info.value.error_type == "StepFailed"
    failures = [e.data for e in await ow.history(handle.run_id) if e.type == "step_failed"]
    assert [(f["counted"], f["final"]) for f in failures] == [
        (False, False),
        (False, False),
        (True, True),  # the third suspension counts: the budget of one attempt is spent
    ]
