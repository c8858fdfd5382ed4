"""The worker's group commit: many runs' appends written together, two batches at a time.

The store under the committer is real (both backends); a thin layer over its ``append`` notes
each batch's size and how many batches were being written at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import ow_es
from ow_es import events as ev
from ow_es.runtime.committer import GroupCommitter
from ow_es.store import Appended, AppendRequest, Outcome, Store


class Watched(Store):
    """The client's store, noting batch sizes and batches at once. With ``gate`` set, a
    batch waits for it before it is written."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.adapter)
        self.sizes: list[int] = []
        self.writing = 0
        self.most_at_once = 0
        self.gate: asyncio.Event | None = None

    async def append(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        self.sizes.append(len(requests))
        self.writing += 1
        self.most_at_once = max(self.most_at_once, self.writing)
        try:
            if self.gate is not None:
                await self.gate.wait()
            return await super().append(requests)
        finally:
            self.writing -= 1


def _create() -> AppendRequest:
    event = ev.RunCreated(workflow_name="wf", available_at=datetime.now(UTC))
    return AppendRequest(run_id=uuid.uuid4().hex, events=[event])


async def _all_written(ow: ow_es.OpenWorkflow, outcomes: Sequence[Outcome]) -> None:
    assert all(isinstance(o, Appended) for o in outcomes), outcomes
    for outcome in outcomes:
        assert isinstance(outcome, Appended)
        assert await ow.store.get_run(outcome.run.id) is not None


async def _commit_together(ow: ow_es.OpenWorkflow, *, requests: int, in_flight: int) -> Watched:
    """Submit ``requests`` new runs at once; all must be written. The store as watched."""
    await ow.connect()
    watched = Watched(ow.store)
    committer = GroupCommitter(watched, in_flight=in_flight)
    outcomes = await asyncio.gather(*(committer.submit(_create()) for _ in range(requests)))
    await _all_written(ow, outcomes)
    return watched


async def test_requests_made_together_are_split_between_two_batches_written_at_once(
    ow: ow_es.OpenWorkflow,
) -> None:
    """Runs woken together would otherwise stay in lockstep: one batch, the worker idle while
    it commits. Alone, a flusher sends half and leaves the rest to a second batch beside it."""
    watched = await _commit_together(ow, requests=40, in_flight=2)
    assert watched.sizes == [20, 20]
    assert watched.most_at_once == 2


async def test_a_few_requests_go_in_one_batch(ow: ow_es.OpenWorkflow) -> None:
    watched = await _commit_together(ow, requests=5, in_flight=2)
    assert watched.sizes == [5]


async def test_no_third_batch_is_sent_while_two_are_being_written(ow: ow_es.OpenWorkflow) -> None:
    """Requests made while two batches are out wait, and then go together in one batch."""
    await ow.connect()
    watched = Watched(ow.store)
    watched.gate = asyncio.Event()
    committer = GroupCommitter(watched, in_flight=2)
    first = [asyncio.ensure_future(committer.submit(_create())) for _ in range(40)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert watched.writing == 2
    later = [asyncio.ensure_future(committer.submit(_create())) for _ in range(7)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert watched.sizes == [20, 20]  # the later seven wait for a batch to come back
    watched.gate.set()
    outcomes = await asyncio.gather(*first, *later)
    assert watched.sizes[:2] == [20, 20] and sum(watched.sizes[2:]) == 7
    assert len(watched.sizes) == 3  # the seven went together, after one of the two returned
    assert watched.most_at_once == 2
    await _all_written(ow, outcomes)


async def test_one_batch_at_a_time_when_asked(ow: ow_es.OpenWorkflow) -> None:
    watched = await _commit_together(ow, requests=40, in_flight=1)
    assert watched.sizes == [40]
    assert watched.most_at_once == 1
