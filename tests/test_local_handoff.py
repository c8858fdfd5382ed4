"""Starts handed to a worker of the same client: a run started by a client whose own worker
serves it with a slot free is created already claimed by that worker (``run_created`` and
``run_claimed`` in one transaction) and executed with no claim of the worker's; a start the
worker's claim would not take at once (delayed, keyed, limited, no slot) is claimed as
before."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import ow_es
from ow_es.durations import utcnow
from ow_es.store.port import Claimed
from tests.support.databases import ClientFactory
from tests.support.waiting import eventually
from tests.support.workers import running_worker, slot_holder


class Claims:
    """The runs the client's store claimed (every claim a worker loop makes goes through
    ``claim_ready``)."""

    def __init__(self, ow: ow_es.OpenWorkflow, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runs: list[str] = []
        self.calls = 0
        real = ow.store.claim_ready

        async def counted(*args: Any, **kwargs: Any) -> Claimed:
            claimed = await real(*args, **kwargs)
            self.calls += 1
            self.runs.extend(run.id for run in claimed.runs)
            return claimed

        monkeypatch.setattr(ow.store, "claim_ready", counted)


def _double(ow: ow_es.OpenWorkflow, limits: ow_es.Limits | None = None) -> Any:
    @ow.workflow(name="double", limits=limits)
    async def double(ctx: ow_es.Context, n: int) -> int:
        return await ctx.step.run("double", lambda: n * 2)

    return double


async def _claims_of(ow: ow_es.OpenWorkflow, run_id: str) -> list[tuple[str, Any]]:
    """The run's ``run_claimed`` events: (worker id, the time of the transaction that wrote
    it)."""
    history = await ow.history(run_id)
    return [(str(e.data["worker_id"]), e.created_at) for e in history if e.type == "run_claimed"]


async def test_a_start_is_created_claimed_by_the_clients_own_worker(
    ow: ow_es.OpenWorkflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = _double(ow)
    await ow.connect()
    claims = Claims(ow, monkeypatch)
    async with running_worker(ow, poll_interval="30s") as worker:
        handle = await double.start(21)
        run = await ow.store.get_run(handle.run_id)
        assert run is not None and run.status in ("running", "completed")
        assert await handle.result(timeout=10) == 42
    history = await ow.history(handle.run_id)
    assert [e.type for e in history][:2] == ["run_created", "run_claimed"]
    # One transaction, the start's: one transaction time.
    assert await _claims_of(ow, handle.run_id) == [(worker.worker_id, history[0].created_at)]
    assert handle.run_id not in claims.runs  # the worker made no claim for it


async def test_starts_beyond_the_free_slots_are_claimed_as_before(
    ow: ow_es.OpenWorkflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()
    hold = slot_holder(ow, gate)
    await ow.connect()
    claims = Claims(ow, monkeypatch)
    async with running_worker(ow, concurrency=2, poll_interval="200ms") as worker:
        first, second, third = [await hold.start() for _ in range(3)]
        await eventually(lambda: worker.busy_slots == 2, timeout=10)
        assert third.run_id not in claims.runs and (await third.status()).status == "pending"
        gate.set()
        assert [await h.result(timeout=10) for h in (first, second, third)] == ["go"] * 3
    assert first.run_id not in claims.runs and second.run_id not in claims.runs
    assert third.run_id in claims.runs  # no slot was free at its start: a claim took it
    history = await ow.history(third.run_id)
    assert history[1].type == "run_claimed" and history[1].created_at > history[0].created_at


@pytest.mark.parametrize("kind", ["delayed", "idempotency key", "limits"])
async def test_a_start_the_claim_must_decide_is_not_handed_over(
    ow: ow_es.OpenWorkflow, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A delayed start (due later), a start by idempotency key (it may name a run that exists)
    and a workflow with limits (they are enforced by the claim) are claimed as before."""
    limits = ow_es.Limits(concurrency=5) if kind == "limits" else None
    double = _double(ow, limits)
    await ow.connect()
    claims = Claims(ow, monkeypatch)
    async with running_worker(ow, poll_interval="50ms"):
        if kind == "delayed":
            handle = await double.start(4, available_at=utcnow() + timedelta(milliseconds=200))
        elif kind == "idempotency key":
            handle = await double.start(4, idempotency_key="order-7")
        else:
            handle = await double.start(4)
        assert await handle.result(timeout=10) == 8
    assert handle.run_id in claims.runs


async def test_limits_stored_by_an_operator_stop_the_handover(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Limits stored for a workflow its code declares none for: the worker's claims see them,
    and from then on its client's starts are claimed (the claim enforces them)."""
    ow = await make_client()
    double = _double(ow)
    await ow.connect()
    claims = Claims(ow, monkeypatch)
    async with running_worker(ow, poll_interval="50ms"):
        handed = await double.start(1)
        assert await handed.result(timeout=10) == 2
        operator = await make_client()
        await operator.connect()
        await operator.set_limits("double", ow_es.Limits(concurrency=1))
        calls = claims.calls
        # An idle poll's claim sent after the limits were stored (not one already in flight).
        await eventually(lambda: claims.calls > calls + 1, timeout=10)
        limited = await double.start(3)
        assert await limited.result(timeout=10) == 6
    assert handed.run_id not in claims.runs
    assert limited.run_id in claims.runs


async def test_a_start_another_client_makes_is_claimed_by_the_worker(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ow, other = await make_client(), await make_client()
    _double(ow)
    _double(other)
    await ow.connect()
    await other.connect()
    claims = Claims(ow, monkeypatch)
    async with running_worker(ow, poll_interval="50ms"):
        handle = await other.start("double", 5)
        assert await handle.result(timeout=10) == 10
    assert handle.run_id in claims.runs


async def test_a_start_that_comes_back_after_the_worker_stopped_claiming_is_handed_back(
    ow: ow_es.OpenWorkflow,
) -> None:
    """The worker stops claiming while the start is in flight: the run it was created
    claimed by is released at once (no wait for its lease), and the next worker runs it."""
    double = _double(ow)
    await ow.connect()
    store = ow.store
    real_append = store.append
    stopped = asyncio.Event()

    async def slow_append(requests: Any) -> Any:
        await stopped.wait()  # the worker stops while this start is in flight
        return await real_append(requests)

    async with running_worker(ow, poll_interval="50ms", lease="60s") as worker:
        store.append = slow_append  # type: ignore[method-assign]
        starting = asyncio.ensure_future(double.start(6))
        await asyncio.sleep(0.05)
        await worker.stop(timeout=1)
        stopped.set()
        handle = await starting
    store.append = real_append  # type: ignore[method-assign]
    await eventually(lambda: _released(ow, handle.run_id), timeout=10)
    async with running_worker(ow, poll_interval="50ms"):
        assert await handle.result(timeout=10) == 12  # not after the 60 s lease


async def _released(ow: ow_es.OpenWorkflow, run_id: str) -> bool:
    """Handed back: ``run_released`` after its claim, and no worker holds it."""
    run = await ow.store.get_run(run_id)
    types = [e.type for e in await ow.history(run_id)]
    return (
        run is not None
        and run.claim_token is None
        and types[-2:]
        == [
            "run_claimed",
            "run_released",
        ]
    )
