"""The backend half of retention and archive import (see ``ow_es.retention``): what an adapter
provides, the records that cross it, and the pure rule that decides which run trees may go.

A run is deleted only with its whole tree (its children, their children...), and only when
every run of the tree is terminal and finished before the cutoff. Candidates are the tree
roots (runs without a parent row), found through the ``workflow_runs_finished`` index in
``(finished_at, id)`` order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import msgspec

from ow_es.models import TERMINAL_STATUSES, Event, StepAttempt, WorkflowRun

# Before every real cursor: the first batch starts here.
START: tuple[datetime, str] = (datetime(1, 1, 1, tzinfo=UTC), "")


class ArchivedRun(msgspec.Struct, kw_only=True):
    """A run as retention archives it (one JSON line) and import loads it back: its row, its
    step attempts and its events, exactly as stored."""

    run: WorkflowRun
    steps: list[StepAttempt]
    events: list[Event]


class SweepResult(msgspec.Struct, kw_only=True):
    """One retention batch: what it deleted (or, in a dry run, would delete), and where the
    next batch starts (None: no candidate is left before the cutoff)."""

    runs: int = 0
    events: int = 0
    steps: int = 0
    archived: int = 0
    cursor: tuple[datetime, str] | None = None


# Writes a batch's runs to the archive and returns once they are durable (flushed, fsynced).
ArchiveSink = Callable[[list[ArchivedRun]], Awaitable[None]]


class Retention(Protocol):
    """Retention's transactions on one namespace of one database."""

    async def sweep(
        self,
        cutoff: datetime,
        after: tuple[datetime, str],
        limit: int,
        *,
        dry_run: bool,
        archive: ArchiveSink | None,
    ) -> SweepResult:
        """One batch, in one transaction: up to ``limit`` candidate roots after ``after``
        (locked, skipping those another transaction holds), each deleted with its tree when
        ``deletable``. With ``archive``, the runs go to it before anything is deleted. The log
        accepts these deletes only inside this transaction. ``dry_run``: count, delete
        nothing, lock nothing."""
        ...

    async def forget_sends(self, cutoff: datetime, limit: int, *, dry_run: bool) -> int:
        """Forget up to ``limit`` signal sends recorded before ``cutoff`` (their idempotency
        keys; a send without a key gets one, so they accumulate); how many."""
        ...

    async def restore(self, runs: list[ArchivedRun]) -> list[str]:
        """Insert archived runs into this namespace as they were (events with their seq, type,
        data and time; new positions), in one transaction; the ids of those inserted. A run
        whose id (or idempotency key) is taken is skipped, with nothing of it written."""
        ...


class Node(msgspec.Struct, frozen=True):
    """What the tree rule needs of a run row."""

    id: str
    parent_run_id: str | None
    status: str
    finished_at: datetime | None


def deletable(roots: Iterable[str], nodes: Iterable[Node], cutoff: datetime) -> list[str]:
    """The ids of the runs to delete: every run of each tree under ``roots`` whose runs are all
    in ``nodes``, terminal and finished before ``cutoff``. A run missing from ``nodes`` (one
    another transaction holds) keeps its whole tree."""
    by_id = {n.id: n for n in nodes}
    children: dict[str, list[str]] = {}
    for node in by_id.values():
        if node.parent_run_id is not None:
            children.setdefault(node.parent_run_id, []).append(node.id)
    out: list[str] = []
    for root in roots:
        tree: list[str] = []
        todo, ok = [root], True
        while todo and ok:
            run_id = todo.pop()
            found = by_id.get(run_id)
            ok = (
                found is not None
                and found.status in TERMINAL_STATUSES
                and found.finished_at is not None
                and found.finished_at < cutoff
            )
            tree.append(run_id)
            todo.extend(children.get(run_id, ()))
        if ok:
            out.extend(tree)
    return out


def group(
    runs: list[WorkflowRun], steps: list[StepAttempt], events: list[Event]
) -> list[ArchivedRun]:
    """Rows read for a batch, one record per run (steps and events in their stored order)."""
    records = {r.id: ArchivedRun(run=r, steps=[], events=[]) for r in runs}
    for step in steps:
        records[step.run_id].steps.append(step)
    for event in events:
        records[event.run_id].events.append(event)
    return list(records.values())


def after_locking(nodes: list[Node], asked: Iterable[str], locked: Iterable[Node]) -> list[Node]:
    """``nodes`` with the rows locked for ``asked`` in their place: a run asked for but not
    locked (another transaction holds it) counts as live, keeping its tree."""
    fresh = {n.id: n for n in locked}
    held = set(asked) - fresh.keys()
    return [
        fresh.get(n.id) or (Node(n.id, n.parent_run_id, "held", None) if n.id in held else n)
        for n in nodes
    ]


S = TypeVar("S", WorkflowRun, StepAttempt)


def in_namespace(row: S, namespace: str) -> S:
    """An archived row as it is restored: into the namespace of the importing client."""
    return msgspec.structs.replace(row, namespace_id=namespace)
