"""Fencing: a writer that lost its claim can write nothing more."""

from __future__ import annotations

import asyncio

import ow_es
from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.store import Appended, AppendRequest
from tests.support.waiting import eventually

WF = "fenced"
KEYS = [(WF, None)]


def _step_done(name: str, worker: str, output: object = 1) -> ev.StepCompleted:
    return ev.StepCompleted(
        step_name=name,
        kind="function",
        attempt=1,
        output=output,
        started_at=utcnow(),
        worker_id=worker,
    )


async def _take_over(ow: ow_es.OpenWorkflow, run_id: str) -> tuple[str, str]:
    """Claim ``run_id`` with a short lease, let it expire and claim it again: the old and
    the new claim token."""
    (first,) = [r for r in await ow.store.claim("worker-1", KEYS, 10, 0.2) if r.id == run_id]
    taken: list[ow_es.WorkflowRun] = []

    async def reclaimed() -> bool:
        taken.extend(r for r in await ow.store.claim("worker-2", KEYS, 10, 30) if r.id == run_id)
        return bool(taken)

    await eventually(reclaimed, timeout=5)
    assert first.claim_token and taken[0].claim_token
    return first.claim_token, taken[0].claim_token


async def test_stale_claim_token_is_rejected_and_writes_nothing(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    old, new = await _take_over(ow, handle.run_id)
    before_events = await ow.history(handle.run_id)
    before_row = await handle.status()

    (outcome,) = await ow.store.append(
        [AppendRequest(run_id=handle.run_id, claim_token=old, events=[_step_done("s", "w1")])]
    )
    assert isinstance(outcome, ow_es.ConcurrencyError)
    assert await ow.history(handle.run_id) == before_events
    after_row = await handle.status()
    assert after_row.seq == before_row.seq
    assert after_row.claim_token == new and after_row.worker_id == "worker-2"
    assert await ow.store.step_attempts(handle.run_id) == []

    # The current owner's write goes through.
    (ok,) = await ow.store.append(
        [AppendRequest(run_id=handle.run_id, claim_token=new, events=[_step_done("s", "w2")])]
    )
    assert isinstance(ok, Appended)
    assert ok.run.seq == before_row.seq + 1
    steps = await ow.store.step_attempts(handle.run_id)
    assert [(s.step_name, s.status) for s in steps] == [("s", "completed")]


async def test_batch_with_a_stale_member_commits_the_valid_one(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    stale_run = await ow.start(WF, {"n": "stale"})
    old, _ = await _take_over(ow, stale_run.run_id)
    valid_run = await ow.start(WF, {"n": "valid"})
    (claimed,) = await ow.store.claim("worker-3", KEYS, 10, 30)
    assert claimed.id == valid_run.run_id and claimed.claim_token
    stale_before = await ow.history(stale_run.run_id)

    outcomes = await ow.store.append(
        [
            AppendRequest(
                run_id=stale_run.run_id, claim_token=old, events=[_step_done("a", "worker-1")]
            ),
            AppendRequest(
                run_id=valid_run.run_id,
                claim_token=claimed.claim_token,
                events=[_step_done("a", "worker-3", output="kept")],
            ),
        ]
    )
    assert isinstance(outcomes[0], ow_es.ConcurrencyError)
    assert isinstance(outcomes[1], Appended)
    assert await ow.history(stale_run.run_id) == stale_before
    valid_events = await ow.history(valid_run.run_id)
    assert valid_events[-1].type == "step_completed"
    assert valid_events[-1].data["output"] == "kept"
    assert [e.seq for e in valid_events] == list(range(1, len(valid_events) + 1))


async def test_batch_with_stale_and_current_writes_to_one_run(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    old, new = await _take_over(ow, handle.run_id)
    outcomes = await ow.store.append(
        [
            AppendRequest(run_id=handle.run_id, claim_token=old, events=[_step_done("x", "w1")]),
            AppendRequest(run_id=handle.run_id, claim_token=new, events=[_step_done("y", "w2")]),
        ]
    )
    assert isinstance(outcomes[0], ow_es.ConcurrencyError)
    assert isinstance(outcomes[1], Appended)
    steps = [e.data.get("step_name") for e in await ow.history(handle.run_id)]
    assert "x" not in steps and "y" in steps


async def test_writes_under_the_claim_of_a_canceled_run_are_rejected(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    (run,) = await ow.store.claim("worker-1", KEYS, 1, 30)
    await handle.cancel()
    before = await ow.history(handle.run_id)
    (outcome,) = await ow.store.append(
        [
            AppendRequest(
                run_id=handle.run_id,
                claim_token=run.claim_token,
                events=[ev.RunCompleted(output="too late", worker_id="worker-1")],
            )
        ]
    )
    assert isinstance(outcome, ow_es.ConcurrencyError | ow_es.InvalidTransition)
    assert await ow.history(handle.run_id) == before
    assert (await handle.status()).status == "canceled"
    assert await ow.store.heartbeat({handle.run_id: str(run.claim_token)}, 30) == set()


async def test_expected_seq_rejects_a_write_over_unseen_events(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    (run,) = await ow.store.claim("worker-1", KEYS, 1, 30)
    # Something else lands on the run (an event that does not revoke the claim).
    (other,) = await ow.store.append(
        [AppendRequest(run_id=handle.run_id, events=[ev.RunWoken(reason="operator")])]
    )
    assert isinstance(other, Appended)
    before = await ow.history(handle.run_id)
    (outcome,) = await ow.store.append(
        [
            AppendRequest(
                run_id=handle.run_id,
                claim_token=run.claim_token,
                expected_seq=run.seq,
                events=[_step_done("s", "worker-1")],
            )
        ]
    )
    assert isinstance(outcome, ow_es.ConcurrencyError)  # StaleRun is a ConcurrencyError
    assert await ow.history(handle.run_id) == before


async def test_every_event_has_a_gapless_seq_under_concurrent_appends(
    ow: ow_es.OpenWorkflow,
) -> None:
    await ow.connect()
    handle = await ow.start(WF, None)
    (run,) = await ow.store.claim("worker-1", KEYS, 1, 30)

    async def write(i: int) -> None:
        (outcome,) = await ow.store.append(
            [
                AppendRequest(
                    run_id=handle.run_id,
                    claim_token=run.claim_token,
                    events=[_step_done(f"s{i}", "worker-1", output=i)],
                )
            ]
        )
        assert isinstance(outcome, Appended)

    await asyncio.gather(*(write(i) for i in range(20)))
    events = await ow.history(handle.run_id)
    assert [e.seq for e in events] == list(range(1, 23))
    assert (await handle.status()).seq == 22
    positions = [e.position for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
