"""Claiming: ownership, leases, takeover, ordering, and what is never claimed.

Most tests drive the store directly (``client.store.claim`` / ``heartbeat``) so that the
lease arithmetic is visible; the rest use a real worker.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial

import pytest

import ow_es
from ow_es.durations import utcnow
from tests.support.databases import ClientFactory
from tests.support.runs import event_types, parked
from tests.support.waiting import eventually
from tests.support.workers import running_worker

WF = "claimable"
KEYS = [(WF, None)]


async def test_claim_sets_owner_lease_and_start_time(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start(WF, {"n": 1})
    pending = await handle.status()
    assert pending.status == "pending"
    assert pending.worker_id is None and pending.lease_until is None
    assert pending.started_at is None and pending.attempts == 0

    before = utcnow()
    claimed = await ow.store.claim("worker-1", KEYS, 10, 30)
    after = utcnow()

    assert [run.id for run in claimed] == [handle.run_id]
    (run,) = claimed
    assert run.status == "running"
    assert run.worker_id == "worker-1"
    assert run.claim_token
    assert run.started_at is not None
    assert before - timedelta(seconds=1) <= run.started_at <= after + timedelta(seconds=1)
    assert run.lease_until is not None
    assert before + timedelta(seconds=29) <= run.lease_until <= after + timedelta(seconds=31)

    # The row says the same thing.
    row = await handle.status()
    assert row.status == "running"
    assert row.worker_id == "worker-1"
    assert row.started_at == run.started_at
    assert row.lease_until is not None and row.lease_until > utcnow() + timedelta(seconds=25)
    assert row.attempts == 1

    # The claim is an event carrying the worker and its lease.
    events = await ow.history(handle.run_id)
    assert [e.type for e in events] == ["run_created", "run_claimed"]
    assert events[1].data["worker_id"] == "worker-1"
    assert "lease_until" in events[1].data

    # While the lease lives nobody else gets it.
    assert await ow.store.claim("worker-2", KEYS, 10, 30) == []
    assert await ow.store.claim("worker-1", KEYS, 10, 30) == []
    assert await event_types(ow, handle.run_id) == ["run_created", "run_claimed"]


async def test_expired_lease_is_reclaimed_by_another_worker(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    (first,) = await ow.store.claim("worker-1", KEYS, 1, 0.3)
    assert await ow.store.claim("worker-2", KEYS, 1, 30) == []

    taken: list[ow_es.WorkflowRun] = []

    async def reclaimed() -> bool:
        taken.extend(await ow.store.claim("worker-2", KEYS, 1, 30))
        return bool(taken)

    await eventually(reclaimed, timeout=5)
    (second,) = taken
    assert second.id == handle.run_id
    assert second.worker_id == "worker-2"
    assert second.claim_token != first.claim_token
    assert second.started_at == first.started_at  # the run started once, at its first claim
    assert first.lease_until is not None
    assert utcnow() >= first.lease_until - timedelta(milliseconds=50)

    # The first worker's token is dead; the second's is alive.
    assert await ow.store.heartbeat({handle.run_id: str(first.claim_token)}, 30) == set()
    assert await ow.store.heartbeat({handle.run_id: str(second.claim_token)}, 30) == {handle.run_id}
    claims = [e for e in await ow.history(handle.run_id) if e.type == "run_claimed"]
    assert [e.data["worker_id"] for e in claims] == ["worker-1", "worker-2"]
    row = await handle.status()
    assert row.worker_id == "worker-2"
    assert row.attempts == 1  # a takeover is not a body attempt


async def test_heartbeat_extends_the_lease_and_keeps_others_out(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    (run,) = await ow.store.claim("worker-1", KEYS, 1, 0.4)
    assert run.lease_until is not None
    held = await ow.store.heartbeat({handle.run_id: str(run.claim_token)}, 30)
    assert held == {handle.run_id}
    row = await handle.status()
    assert row.lease_until is not None
    assert row.lease_until > run.lease_until + timedelta(seconds=20)
    await asyncio.sleep(0.6)  # past the original lease
    assert await ow.store.claim("worker-2", KEYS, 1, 30) == []
    # A heartbeat with a wrong token holds nothing and moves nothing.
    assert await ow.store.heartbeat({handle.run_id: "not-the-token"}, 3600) == set()
    again = await handle.status()
    assert again.lease_until == row.lease_until
    # Heartbeats are coordination, not history.
    assert await event_types(ow, handle.run_id) == ["run_created", "run_claimed"]


async def test_pending_runs_are_preferred_over_expired_leases(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    old = await ow.start(WF, {"which": "old"})
    (held,) = await ow.store.claim("crashed", KEYS, 1, 0.2)
    assert held.id == old.run_id
    await asyncio.sleep(0.35)  # the lease of `old` has expired
    new = await ow.start(WF, {"which": "new"})

    (first,) = await ow.store.claim("worker-2", KEYS, 1, 30)
    assert first.id == new.run_id, "a new pending run must come before an expired lease"
    (second,) = await ow.store.claim("worker-2", KEYS, 1, 30)
    assert second.id == old.run_id
    assert await ow.store.claim("worker-2", KEYS, 1, 30) == []


async def test_claim_respects_its_limit(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    ids = [(await ow.start(WF, {"i": i})).run_id for i in range(5)]
    first = await ow.store.claim("w", KEYS, 3, 30)
    assert len(first) == 3
    rest = await ow.store.claim("w", KEYS, 3, 30)
    assert len(rest) == 2
    assert sorted(r.id for r in first + rest) == sorted(ids)
    # Oldest first.
    assert [r.id for r in first] == ids[:3]


async def test_canceled_runs_are_never_claimed(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    pending = await ow.start(WF, {"state": "pending"})
    await pending.cancel()
    assert await ow.store.claim("w", KEYS, 10, 30) == []

    running = await ow.start(WF, {"state": "running"})
    (run,) = await ow.store.claim("crashed", KEYS, 10, 0.2)
    assert run.id == running.run_id
    await running.cancel()
    await asyncio.sleep(0.35)  # past the lease the canceled run had
    assert await ow.store.claim("w", KEYS, 10, 30) == []
    for handle in (pending, running):
        row = await handle.status()
        assert row.status == "canceled"
        assert row.worker_id is None and row.lease_until is None
    assert await event_types(ow, pending.run_id) == ["run_created", "run_canceled"]
    assert await event_types(ow, running.run_id) == [
        "run_created",
        "run_claimed",
        "run_canceled",
    ]


async def test_claim_only_takes_the_requested_workflows(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    v1 = await ow.start("versioned", None, version="1")
    v2 = await ow.start("versioned", None, version="2")
    unversioned = await ow.start("versioned", None)
    other = await ow.start("other", None, version="1")
    (run,) = await ow.store.claim("w", [("versioned", "1")], 10, 30)
    assert run.id == v1.run_id
    assert await ow.store.claim("w", [("versioned", "1")], 10, 30) == []
    for handle in (v2, unversioned, other):
        assert (await handle.status()).status == "pending"


async def test_unregistered_version_stays_pending_untouched(
    ow: ow_es.OpenWorkflow, make_client: ClientFactory
) -> None:
    calls: list[str] = []

    @ow.workflow(name="versioned-wf", version="1")
    async def versioned(ctx: ow_es.Context) -> str:
        calls.append(str(ctx.run.version))
        return "v1"

    await ow.connect()
    producer = await make_client()  # knows the name only, not the definition
    await producer.connect()
    foreign = await producer.start("versioned-wf", {"x": 1}, version="2")
    unversioned = await producer.start("versioned-wf", {"x": 2})
    async with running_worker(ow, concurrency=2):
        mine = await versioned.start()
        assert await mine.result(timeout=15) == "v1"
        # Several claim rounds have run since `foreign` was created.
        await asyncio.sleep(0.3)
        for handle in (foreign, unversioned):
            row = await handle.status()
            assert row.status == "pending"
            assert row.worker_id is None
            assert row.started_at is None
            assert row.attempts == 0
            assert await event_types(ow, handle.run_id) == ["run_created"]
    assert calls == ["1"]


async def test_past_deadline_fails_without_a_claim(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start(WF, None, deadline_at=utcnow() - timedelta(seconds=1))
    assert await ow.store.claim("w", KEYS, 10, 30) == []
    run = await handle.status()
    assert run.status == "failed"
    assert run.error is not None
    assert run.error["type"] == "DeadlineExceeded"
    assert run.error["message"] == "deadline exceeded"
    events = await ow.history(handle.run_id)
    assert [e.type for e in events] == ["run_created", "run_failed"]
    assert events[-1].data["reason"] == "deadline exceeded"
    # And it stays that way.
    assert await ow.store.claim("w", KEYS, 10, 30) == []


async def test_worker_fails_past_deadline_runs_without_executing(ow: ow_es.OpenWorkflow) -> None:
    calls: list[int] = []

    @ow.workflow(name="late")
    async def late(ctx: ow_es.Context) -> str:
        calls.append(1)
        return "ran"

    await ow.connect()
    handle = await late.start(deadline_at=utcnow() - timedelta(seconds=5))
    async with running_worker(ow):
        try:
            await handle.result(timeout=10)
        except ow_es.WorkflowFailed as exc:
            assert exc.error_type == "DeadlineExceeded"
            assert exc.error_message == "deadline exceeded"
        else:
            raise AssertionError("a run past its deadline must fail")
        fresh = await late.start()
        assert await fresh.result(timeout=10) == "ran"
    assert calls == [1]
    types = await event_types(ow, handle.run_id)
    assert "run_claimed" not in types
    assert types[-1] == "run_failed"


async def test_deadline_before_available_at_fails_the_run_at_the_deadline(
    ow: ow_es.OpenWorkflow,
) -> None:
    calls: list[int] = []

    @ow.workflow(name="never-due")
    async def never_due(ctx: ow_es.Context) -> None:
        calls.append(1)

    await ow.connect()
    deadline = utcnow() + timedelta(milliseconds=400)
    handle = await never_due.start(available_at="1h", deadline_at=deadline)
    async with running_worker(ow):
        try:
            await handle.result(timeout=10)
        except ow_es.WorkflowFailed as exc:
            assert exc.error_type == "DeadlineExceeded"
        else:
            raise AssertionError("expected the deadline to fail the run")
    run = await handle.status()
    assert run.finished_at is not None and run.finished_at >= deadline - timedelta(milliseconds=50)
    assert calls == []
    assert "run_claimed" not in await event_types(ow, handle.run_id)


async def test_deadline_reached_while_running_fails_the_run(ow: ow_es.OpenWorkflow) -> None:
    after: list[int] = []

    @ow.workflow(name="too-slow")
    async def too_slow(ctx: ow_es.Context) -> str:
        async def slow() -> str:
            await asyncio.sleep(30)
            return "slow"

        await ctx.step.run("slow", slow)
        after.append(1)
        return "done"

    await ow.connect()
    handle = await too_slow.start(deadline_at=utcnow() + timedelta(milliseconds=500))
    async with running_worker(ow):
        try:
            await handle.result(timeout=10)
        except ow_es.WorkflowFailed as exc:
            assert exc.error_type == "DeadlineExceeded"
        else:
            raise AssertionError("expected a deadline failure")
    run = await handle.status()
    assert run.status == "failed"
    assert run.error is not None and run.error["message"] == "deadline exceeded"
    assert after == []


async def test_deadline_reached_while_sleeping_fails_the_parked_run(
    ow: ow_es.OpenWorkflow,
) -> None:
    woke: list[int] = []

    @ow.workflow(name="long-nap")
    async def long_nap(ctx: ow_es.Context) -> None:
        await ctx.step.sleep("nap", "1h")
        woke.append(1)

    await ow.connect()
    handle = await long_nap.start(deadline_at=utcnow() + timedelta(seconds=1))
    async with running_worker(ow):
        try:
            await handle.result(timeout=10)
        except ow_es.WorkflowFailed as exc:
            assert exc.error_type == "DeadlineExceeded"
        else:
            raise AssertionError("expected a deadline failure")
    types = await event_types(ow, handle.run_id)
    assert types[:3] == ["run_created", "run_claimed", "step_started"]
    assert "run_sleeping" in types
    assert types[-1] == "run_failed"
    assert types.count("run_claimed") == 1  # failed by the claim, not executed again
    assert woke == []


async def test_concurrent_claimers_never_share_a_run(make_client: ClientFactory) -> None:
    clients = [await (await make_client()).connect() for _ in range(4)]
    ids = {(await clients[0].start(WF, {"i": i})).run_id for i in range(20)}

    async def claim_all(client: ow_es.OpenWorkflow, name: str) -> list[str]:
        got: list[str] = []
        for _ in range(10):
            batch = await client.store.claim(name, KEYS, 3, 30)
            got += [run.id for run in batch]
            await asyncio.sleep(0)
        return got

    results = await asyncio.gather(*(claim_all(c, f"w{i}") for i, c in enumerate(clients)))
    claimed = [run_id for batch in results for run_id in batch]
    assert sorted(claimed) == sorted(ids)  # every run once, none twice
    for run_id in ids:
        types = await event_types(clients[0], run_id)
        assert types == ["run_created", "run_claimed"]


async def test_claims_stay_inside_their_namespace(make_client: ClientFactory) -> None:
    here = await (await make_client()).connect()
    there = await (await make_client(namespace="tenant-b")).connect()
    mine = await here.start(WF, None)
    assert await there.store.claim("w", KEYS, 10, 30) == []
    with pytest.raises(ow_es.RunNotFound):
        await there.get_handle(mine.run_id)
    with pytest.raises(ow_es.RunNotFound):
        await there.cancel(mine.run_id)
    assert (await there.list_runs()).runs == []
    (run,) = await here.store.claim("w", KEYS, 10, 30)
    assert run.id == mine.run_id


async def test_a_start_by_name_on_the_registering_client_uses_its_version_and_input_type(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Without ``version=``, a start by name on a client that registered the workflow means
    that definition: its version (so a worker serves it) and its input validation."""

    @ow.workflow(name="typed-wf", version="2")
    async def typed(ctx: ow_es.Context, count: int) -> int:
        return count + 1

    await ow.connect()
    with pytest.raises(ow_es.ValidationError, match="input"):
        await ow.start("typed-wf", "not a number")
    handle = await ow.start("typed-wf", 41)
    assert (await handle.status()).version == "2"
    async with running_worker(ow):
        assert await handle.result(timeout=15) == 42


# -- the claim of the run a wake-up named (``claim_ready(offered=...)``) ----------------------
# PostgreSQL claims it by its id where it is the run to take first, in a lighter statement;
# SQLite claims as usual. Either way the same runs come, in the same order.


async def test_a_named_run_is_claimed_only_after_the_runs_before_it(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    old = await ow.start(WF, "old")
    high = await ow.start(WF, "high", priority=3)
    named = await ow.start(WF, "named")
    order = []
    for _ in range(3):
        claimed = await ow.store.claim_ready("w", KEYS, 1, 30, offered=named.run_id)
        order += [run.id for run in claimed.runs]
    assert order == [high.run_id, old.run_id, named.run_id]  # priority, then age


async def test_a_due_timer_before_a_named_run_is_claimed_first(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="napper")
    async def napper(ctx: ow_es.Context) -> None:
        await ctx.step.sleep("nap", "1s")

    await ow.connect()
    async with running_worker(ow):
        napping = await napper.start()
        await eventually(partial(parked, ow, napping.run_id, "sleep"), timeout=5)
    await asyncio.sleep(1.1)  # its timer is due, with no worker to see it
    named = await napper.start()
    claimed = await ow.store.claim_ready("w", ow.registered_keys(), 1, 30, offered=named.run_id)
    assert [run.id for run in claimed.runs] == [napping.run_id]


async def test_a_named_run_due_later_is_left_and_its_time_told(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    later = await ow.start(WF, None, available_at="1h")
    claimed = await ow.store.claim_ready("w", KEYS, 1, 30, offered=later.run_id)
    assert claimed.runs == []
    assert claimed.offered == (ow.store.adapter.single is not None)
    if claimed.offered:  # the worker's next timer, with no read of its own
        assert claimed.next_wake_at == (await later.status()).available_at


async def test_a_named_run_comes_before_expired_leases_which_follow(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    old = await ow.start(WF, "old")
    await ow.store.claim("crashed", KEYS, 1, 0.2)
    await asyncio.sleep(0.35)  # the lease of `old` has expired
    named = await ow.start(WF, "named")
    claimed = await ow.store.claim_ready("w", KEYS, 2, 30, offered=named.run_id)
    assert claimed.runs[0].id == named.run_id
    if len(claimed.runs) == 1:  # the claim by id: it says more is ready, to claim at once
        assert claimed.offered and claimed.others
        claimed = await ow.store.claim_ready("w", KEYS, 2, 30)
    assert [run.id for run in claimed.runs][-1] == old.run_id
