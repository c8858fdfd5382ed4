"""Group commit: appends from many slots are flushed together as one ``Store.append``.

There the rules write what they can as one-statement appends (sent in one round trip), the
rest in one transaction, and compound requests (a child start, a signal send) each in a
transaction of their own. Each caller awaits the durability of its own request; while one
batch commits, the next one gathers, so latency stays one commit and throughput grows with
concurrency.

Two batches commit at once: while the database writes one, the worker runs the steps of the
runs the other one answered. Runs woken together would otherwise stay in lockstep (all of them
in one batch, the worker idle while it commits, the database idle while they run), so a
flusher that is alone sends half of a large queue and leaves the rest to a second one. A run
has one request in flight at most, so no run is in both batches; rows both lock (a parent, a
signal's receiver) are waited for as between two workers.
"""

from __future__ import annotations

import asyncio

from ow_es.errors import ValidationError
from ow_es.metrics import WorkerMetrics
from ow_es.store import AppendRequest, Outcome, Store

_SPLIT_FROM = 8  # requests per batch, at least, before a queue is split between batches


class GroupCommitter:
    def __init__(
        self,
        store: Store,
        max_batch: int = 500,
        metrics: WorkerMetrics | None = None,
        in_flight: int = 2,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._max_batch = max_batch
        self._in_flight = in_flight  # batches committing at once, at most
        self._queue: list[tuple[AppendRequest, asyncio.Future[Outcome]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._committing = 0  # batches sent and not yet answered

    async def submit(self, request: AppendRequest) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if len(self._flushers) < self._in_flight:
            # It runs after the callers already woken, so their requests join its batch.
            flusher = asyncio.create_task(self._flush_all(), name="ow-es-group-commit")
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return await future

    async def _flush_all(self) -> None:
        while self._queue:
            take = min(len(self._queue), self._max_batch)
            if self._committing == 0 and take >= self._in_flight * _SPLIT_FROM:
                take = -(-take // self._in_flight)  # the rest goes beside it, in another batch
            batch = self._queue[:take]
            del self._queue[:take]
            self._committing += 1
            try:
                await self._flush(batch)
            finally:
                self._committing -= 1

    async def _flush(self, batch: list[tuple[AppendRequest, asyncio.Future[Outcome]]]) -> None:
        try:
            outcomes = await self._store.append([request for request, _ in batch])
        except ValidationError as exc:
            if len(batch) > 1:
                # One member's data was refused: the others must not fail with it. Alone,
                # each meets its own fate.
                for item in batch:
                    await self._flush([item])
                return
            failure: Exception = exc
        except Exception as exc:  # the whole batch shares the transaction's fate
            failure = exc
        else:
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
            if self._metrics is not None:
                self._metrics.committed([request for request, _ in batch], outcomes)
            return
        for _, future in batch:
            if not future.done():
                future.set_exception(failure)
