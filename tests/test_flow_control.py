"""Flow control: keys and priorities at start, and the limits the claim enforces
(concurrency, per key, rate, per-key rate), stored in the database where operators change
them. The claims here go through ``client.store.claim`` so that each decision is visible;
``test_flow_control_processes.py`` checks the same limits with four worker processes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import ow_es
from ow_es.durations import utcnow
from ow_es.events import RunCompleted
from ow_es.store import Appended, AppendRequest
from tests.support.runs import event_types, parked
from tests.support.waiting import eventually
from tests.support.workers import running_worker

WF = "flow"
KEYS = [(WF, None)]


async def _start(ow: ow_es.OpenWorkflow, n: int, **options: Any) -> list[str]:
    return [(await ow.start(WF, i, **options)).run_id for i in range(n)]


async def _complete(ow: ow_es.OpenWorkflow, run: ow_es.WorkflowRun) -> None:
    request = AppendRequest(
        run_id=run.id, claim_token=run.claim_token, events=[RunCompleted(output=None)]
    )
    (outcome,) = await ow.store.append([request])
    assert isinstance(outcome, Appended)


async def test_key_and_priority_are_on_the_run_and_its_created_event(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    handle = await ow.start(WF, None, key="tenant-7", priority=5)
    run = await handle.status()
    assert (run.key, run.priority) == ("tenant-7", 5)
    (created,) = await ow.history(handle.run_id)
    assert created.data["key"] == "tenant-7" and created.data["priority"] == 5
    plain = await (await ow.start(WF, None)).status()
    assert (plain.key, plain.priority) == (None, 0)


async def test_higher_priority_is_claimed_first_and_fifo_within_a_priority(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    ids = [(await ow.start(WF, i, priority=p)).run_id for i, p in enumerate([0, 5, -1, 5, 0, 9])]
    order = []
    for _ in ids:
        (run,) = await ow.store.claim("w", KEYS, 1, 30)
        order.append(run.id)
    assert order == [ids[5], ids[1], ids[3], ids[0], ids[4], ids[2]]


async def test_due_timers_are_claimed_by_priority_too(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    soon = utcnow() + timedelta(milliseconds=300)
    low = await ow.start(WF, None, available_at=soon)
    high = await ow.start(WF, None, available_at=soon + timedelta(milliseconds=1), priority=3)
    await asyncio.sleep(0.5)
    (first,) = await ow.store.claim("w", KEYS, 1, 30)
    (second,) = await ow.store.claim("w", KEYS, 1, 30)
    assert [first.id, second.id] == [high.run_id, low.run_id]


async def test_concurrency_caps_held_runs_and_an_end_frees_a_place(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    await ow.set_limits(WF, ow_es.Limits(concurrency=2))
    await _start(ow, 5)
    held = await ow.store.claim("w1", KEYS, 10, 30)
    assert len(held) == 2
    assert await ow.store.claim("w2", KEYS, 10, 30) == []
    await _complete(ow, held[0])
    (third,) = await ow.store.claim("w2", KEYS, 10, 30)
    assert third.id not in {r.id for r in held}


async def test_per_key_limit_skips_to_other_keys(ow: ow_es.OpenWorkflow) -> None:
    """Four runs of key a wait at the head of the queue; a claim takes one of them and the
    runs of keys b and c behind them (no head-of-line blocking), and a run without a key."""
    await ow.connect()
    await ow.set_limits(WF, ow_es.Limits(per_key=1))
    a = await _start(ow, 4, key="a")
    b = await _start(ow, 2, key="b")
    c = await _start(ow, 1, key="c")
    (free,) = await _start(ow, 1)
    claimed = await ow.store.claim("w", KEYS, 10, 30)
    assert [r.id for r in claimed] == [a[0], b[0], c[0], free]
    assert await ow.store.claim("w", KEYS, 10, 30) == []


async def test_rate_counts_first_claims_in_a_sliding_window(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    await ow.set_limits(WF, ow_es.Limits(rate="3/1s"))
    await _start(ow, 7)
    first = await ow.store.claim_ready("w", KEYS, 10, 30)
    assert len(first.runs) == 3
    empty = await ow.store.claim_ready("w", KEYS, 10, 30)
    assert empty.runs == []
    assert empty.retry_at is not None  # when the window lets the next run start
    started = min(r.started_at for r in first.runs if r.started_at is not None)
    assert empty.retry_at == started + timedelta(seconds=1)
    await asyncio.sleep(max(0.0, (empty.retry_at - utcnow()).total_seconds()))
    await asyncio.sleep(0.05)
    assert len(await ow.store.claim("w", KEYS, 10, 30)) == 3


async def test_per_key_rate_holds_one_key_while_others_start(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    await ow.set_limits(WF, ow_es.Limits(per_key_rate="2/1m"))
    a = await _start(ow, 3, key="a")
    b = await _start(ow, 1, key="b")
    claimed = await ow.store.claim("w", KEYS, 10, 30)
    assert [r.id for r in claimed] == [a[0], a[1], b[0]]


async def test_a_reclaim_after_an_expired_lease_needs_no_new_place(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    await ow.set_limits(WF, ow_es.Limits(concurrency=1, rate="1/1h"))
    (run_id,) = await _start(ow, 1)
    (first,) = await ow.store.claim("w1", KEYS, 1, 0.2)
    await asyncio.sleep(0.4)
    (again,) = await ow.store.claim("w2", KEYS, 1, 30)
    assert again.id == first.id == run_id and again.claim_token != first.claim_token


async def test_a_parked_run_holds_no_place(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="parks", limits=ow_es.Limits(concurrency=1))
    async def parks(ctx: ow_es.Context, n: int) -> int:
        if n == 0:
            await ctx.step.wait_for_signal("go", timeout="1m")
        return n

    await ow.connect()
    async with running_worker(ow, concurrency=4):
        waiting = await parks.start(0)
        await eventually(lambda: parked(ow, waiting.run_id, "signal"))
        other = await parks.start(1)  # the only place is free while run 0 waits
        assert await other.result(timeout=10) == 1
        await ow.send_signal("go")
        assert await waiting.result(timeout=10) == 0


async def test_limits_from_code_are_stored_and_an_operators_win(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="declared", limits=ow_es.Limits(concurrency=3, rate="5/1s"))
    async def declared(ctx: ow_es.Context, n: int) -> int:
        return n

    await ow.connect()
    async with running_worker(ow):
        pass
    (stored,) = await ow.limits()
    assert stored.workflow_name == "declared" and stored.source == "code"
    assert stored.limits == ow_es.Limits(concurrency=3, rate="5/1s")

    await ow.set_limits("declared", ow_es.Limits(concurrency=1))
    async with running_worker(ow):  # a deploy does not overwrite the operator's limits
        pass
    (stored,) = await ow.limits()
    assert stored.source == "operator" and stored.limits == ow_es.Limits(concurrency=1)

    assert await ow.clear_limits("declared") is True
    assert await ow.limits() == []
    assert await ow.clear_limits("declared") is False
    declared.limits = ow_es.Limits(per_key=2)  # the next deploy's code
    async with running_worker(ow):
        pass
    (stored,) = await ow.limits()
    assert stored.source == "code" and stored.limits == ow_es.Limits(per_key=2)
    declared.limits = ow_es.Limits()  # a deploy whose code declares no limits any more
    async with running_worker(ow):
        pass
    assert await ow.limits() == []


async def test_a_limited_workflow_runs_to_the_end_through_a_worker(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Runs held back by a full limit are taken as places free, by the worker whose run
    ended (no other wake-up is needed)."""

    @ow.workflow(name="one-at-a-time", limits=ow_es.Limits(concurrency=1))
    async def one(ctx: ow_es.Context, n: int) -> int:
        return await ctx.step.run("double", lambda: n * 2)

    await ow.connect()
    async with running_worker(ow, concurrency=8, poll_interval="5s"):
        handles = [await one.start(i) for i in range(6)]
        assert [await h.result(timeout=20) for h in handles] == [0, 2, 4, 6, 8, 10]
    for handle in handles:  # each claimed once: no claim beyond the limit was refused late
        assert (await event_types(ow, handle.run_id)).count("run_claimed") == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"per_key": -1}, "per_key"),
        ({"concurrency": True}, "concurrency"),
        ({"rate": "ten per second"}, "rate"),
        ({"rate": "0/1s"}, "rate"),
        ({"per_key_rate": "5/forever"}, "per_key_rate"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ow_es.Limits(**kwargs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key": ""}, "key"),
        ({"key": "a\x00b"}, "key"),
        ({"priority": "high"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"priority": 2**31}, "priority"),
    ],
)
async def test_a_bad_key_or_priority_is_refused_and_nothing_is_written(
    ow: ow_es.OpenWorkflow, options: dict[str, Any], message: str
) -> None:
    await ow.connect()
    with pytest.raises(ow_es.ValidationError, match=message):
        await ow.start(WF, None, **options)
    assert (await ow.list_runs()).runs == []


def test_rates_read_as_count_per_period() -> None:
    from ow_es.limits import Rate

    assert Rate.parse("100/1m") == Rate(100, 60.0)
    assert Rate.parse("10/s") == Rate(10, 1.0)
    assert Rate.parse(" 5 / 2h ") == Rate(5, 7200.0)


async def test_ready_runs_held_back_by_a_limit_say_why_and_are_counted(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    await ow.set_limits(WF, ow_es.Limits(concurrency=1, per_key_rate="1/1h"))
    first, second = await _start(ow, 2)
    (keyed,) = await _start(ow, 1, key="k")
    assert await ow.store.limited_runs() == {WF: 0}
    (held,) = await ow.store.claim("w", KEYS, 10, 30)
    assert held.id == first
    waiting = await ow.store.get_run(second)
    assert waiting is not None
    assert await ow.store.held_back(waiting) == "concurrency limit 1 reached"
    assert await ow.store.limited_runs() == {WF: 2}
    assert await ow.store.held_back(held) is None  # held runs are not waiting
    await _complete(ow, held)
    (taken,) = await ow.store.claim("w", KEYS, 10, 30)
    assert taken.id == second
    await _complete(ow, taken)
    (taken,) = await ow.store.claim("w", KEYS, 10, 30)
    assert taken.id == keyed
    await _complete(ow, taken)
    again = await ow.start(WF, None, key="k")
    row = await again.status()
    assert await ow.store.held_back(row) == "per-key rate 1/1h reached for key 'k'"
    assert await ow.store.limited_runs() == {WF: 1}


async def test_reproject_rebuilds_keys_priorities_and_the_places_held(
    ow: ow_es.OpenWorkflow,
) -> None:
    """The places a limit counts are columns of the runs projection: a rebuild from the log
    gives the same rows, so the limit holds the same runs back afterwards."""
    await ow.connect()
    await ow.set_limits(WF, ow_es.Limits(per_key=1, rate="100/1h"))
    await _start(ow, 3, key="a", priority=2)
    await _start(ow, 2, key="b")
    claimed = await ow.store.claim("w", KEYS, 10, 30)
    assert len(claimed) == 2
    before = await ow.store.limited_runs()
    assert before == {WF: 3}
    assert (await ow.reproject(verify=True)).differences == []
    report = await ow.reproject()
    assert report.swapped
    assert await ow.store.limited_runs() == before
    page = await ow.list_runs(limit=10)
    assert sorted((r.key, r.priority) for r in page.runs) == [
        ("a", 2), ("a", 2), ("a", 2), ("b", 0), ("b", 0)
    ]  # fmt: skip
