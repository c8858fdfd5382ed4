"""``ow-es reproject``: rebuild ``workflow_runs`` and ``step_attempts`` from the event log.

The rebuild folds the log into shadow tables with the same projector functions as the inline
path, in short batches (each batch and its checkpoint in one transaction, so an interrupted
rebuild resumes). Then, under a brief exclusive append gate, it catches up the tail, carries
live leases over and swaps the tables by rename in one transaction; the old tables are kept
(``*_previous``) for rollback. ``verify`` rebuilds and diffs instead of swapping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ow_es.errors import OwEsError
from ow_es.models import StepAttempt, WorkflowRun
from ow_es.projections import Recorded, apply_run, step_row
from ow_es.store.rebuild_port import (
    Difference,
    GateBusy,
    Rebuilder,
    RebuildTx,
    RunKey,
)

log = logging.getLogger("ow_es.reproject")

BATCH_SIZE = 50_000  # events per rebuild transaction
CACHE_LIMIT = 200_000


@dataclass
class Report:
    events: int = 0
    resumed: bool = False
    swapped: bool = False
    gate_attempts: int = 0
    gate_seconds: float = 0.0
    differences: list[Difference] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class _Folder:
    """Folds log batches onto cached shadow rows, applying each run's events in seq order
    (the log's (tx_id, position) order can interleave two transactions of one run)."""

    def __init__(self) -> None:
        self.cache: dict[RunKey, WorkflowRun] = {}
        self.pending: dict[RunKey, dict[int, Recorded]] = {}

    async def apply(self, tx: RebuildTx, events: list[Recorded], cursor: str) -> None:
        missing = {(e.namespace_id, e.run_id) for e in events} - self.cache.keys()
        if missing:
            self.cache.update(await tx.load_runs(sorted(missing)))
        changed: dict[RunKey, WorkflowRun] = {}
        steps: dict[tuple[str, str, str, int], StepAttempt] = {}
        for event in events:
            key = (event.namespace_id, event.run_id)
            self.pending.setdefault(key, {})[event.seq] = event
            self._drain(key, changed, steps)
        await tx.write(list(changed.values()), list(steps.values()), cursor)
        for key, run in changed.items():
            if run.is_terminal and not self.pending.get(key):
                self.cache.pop(key, None)
        if len(self.cache) > CACHE_LIMIT:
            self.cache.clear()  # the shadow table has them all; reload on demand

    def _drain(
        self,
        key: RunKey,
        changed: dict[RunKey, WorkflowRun],
        steps: dict[tuple[str, str, str, int], StepAttempt],
    ) -> None:
        waiting = self.pending[key]
        run = self.cache.get(key)
        while (next_seq := (run.seq + 1 if run else 1)) in waiting:
            rec = waiting.pop(next_seq)
            run = apply_run(run, rec)
            step = step_row(rec)
            if step is not None:
                steps[(step.namespace_id, step.run_id, step.step_name, step.attempt)] = step
        if run is not None:
            self.cache[key] = run
            changed[key] = run
        if not waiting:
            del self.pending[key]

    def gaps(self) -> list[str]:
        return [f"{ns}/{run} waits for seq {min(s) - 1}" for (ns, run), s in self.pending.items()]


async def _catch_up(
    rebuilder: Rebuilder,
    folder: _Folder,
    cursor: str,
    progress: Callable[[int], None],
) -> tuple[str, int]:
    """Fold the log behind the barrier, one short transaction per batch; the next batch is
    read while this one is folded and written."""
    total = 0
    reading = asyncio.ensure_future(rebuilder.read(cursor, BATCH_SIZE))
    try:
        while True:
            events, next_cursor = await reading
            if len(events) == BATCH_SIZE:
                reading = asyncio.ensure_future(rebuilder.read(next_cursor, BATCH_SIZE))
            if events:
                async with rebuilder.batch() as tx:
                    await folder.apply(tx, events, next_cursor)
            total += len(events)
            progress(len(events))
            cursor = next_cursor
            if len(events) < BATCH_SIZE:
                return cursor, total
    finally:
        reading.cancel()


async def _under_gate(
    tx: RebuildTx, folder: _Folder, cursor: str, progress: Callable[[int], None]
) -> int:
    """Inside the gate no append is in flight: read the tail without the barrier."""
    total = 0
    while True:
        events, cursor = await tx.read(cursor, BATCH_SIZE, barrier=False)
        if events:
            await folder.apply(tx, events, cursor)
        total += len(events)
        progress(len(events))
        if len(events) < BATCH_SIZE:
            return total


async def rebuild(
    rebuilder: Rebuilder,
    *,
    verify: bool = False,
    progress: Callable[[int], None] = lambda n: None,
    lock_timeout: float = 2.0,
    max_gate_attempts: int = 30,
) -> Report:
    """Rebuild the projections; swap them in (or, with ``verify``, diff them and discard)."""
    report = Report(counts=await rebuilder.counts())
    cursor, report.resumed = await rebuilder.start()
    folder = _Folder()
    cursor, report.events = await _catch_up(rebuilder, folder, cursor, progress)
    await rebuilder.build_indexes()
    loop = asyncio.get_running_loop()
    while True:
        report.gate_attempts += 1
        started = loop.time()
        try:
            if verify:
                await _verify(rebuilder, folder, cursor, progress, report, lock_timeout, started)
            else:
                async with rebuilder.gate(lock_timeout) as gate:
                    report.events += await _under_gate(gate, folder, cursor, progress)
                    _check_gaps(folder)
                    await gate.swap()
                    report.swapped = True
                report.gate_seconds = loop.time() - started
            break
        except GateBusy:
            if report.gate_attempts >= max_gate_attempts:
                raise OwEsError(
                    f"could not take the append gate in {max_gate_attempts} attempts; "
                    "the rebuilt tables are kept and the next run resumes"
                ) from None
            await asyncio.sleep(min(0.1 * report.gate_attempts, 2.0))
            cursor, more = await _catch_up(rebuilder, folder, cursor, progress)
            report.events += more
    if verify:
        await rebuilder.discard()
    return report


def _check_gaps(folder: _Folder) -> None:
    if folder.gaps():
        raise OwEsError("the log has gaps: " + "; ".join(folder.gaps()[:5]))


async def _verify(
    rebuilder: Rebuilder,
    folder: _Folder,
    cursor: str,
    progress: Callable[[int], None],
    report: Report,
    lock_timeout: float,
    started: float,
) -> None:
    """Catch up under the gate, then diff in a snapshot taken before the gate is let go: the
    comparison is consistent, yet appends wait only for the catch-up, not the diff."""
    loop = asyncio.get_running_loop()
    async with rebuilder.frozen(lock_timeout) as frozen:
        async with frozen.batch() as tx:
            report.events += await _under_gate(tx, folder, cursor, progress)
        _check_gaps(folder)
        report.differences = await frozen.diff_after_release()
        report.gate_seconds = (frozen.released_at or loop.time()) - started
