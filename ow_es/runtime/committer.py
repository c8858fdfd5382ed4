"""Group commit: appends from many slots are flushed together as one ``Store.append``.

There the rules write what they can as one-statement appends (sent in one round trip), the
rest in one transaction, and compound requests (a child start, a signal send) each in a
transaction of their own. Each caller awaits the durability of its own request; while one
batch commits, the next one gathers, so latency stays one commit and throughput grows with
concurrency.
"""

from __future__ import annotations

import asyncio

from ow_es.errors import ValidationError
from ow_es.metrics import WorkerMetrics
from ow_es.store import AppendRequest, Outcome, Store


class GroupCommitter:
    def __init__(
        self, store: Store, max_batch: int = 500, metrics: WorkerMetrics | None = None
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._max_batch = max_batch
        self._queue: list[tuple[AppendRequest, asyncio.Future[Outcome]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, request: AppendRequest) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_all(), name="ow-es-group-commit")
        return await future

    async def _flush_all(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._flush(batch)
        finally:
            self._flusher = None

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
