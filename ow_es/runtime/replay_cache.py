"""A worker's cache of the replay state of runs it parked, so that its next claim of such a run
reads only the events written since, not the whole history.

An entry is a run's ``History`` exactly as a full read folded it when the worker last loaded
the run (so it is the fold of the run's first ``seq`` events), put in the cache only once the
run is parked by the worker (a sleep, a wait, a retry's backoff). The next claim takes it out
of the cache (no two executions ever share one) and folds in the events after its ``seq``. Any
doubt means a full read, as without the cache: the events after it do not follow on from it,
they hold more than our one claim (someone else held the run in between), or the run's row
is not the one the entry was made from. The cache changes cost, never behaviour.

Memory is bounded: least recently parked entries go first once the sizes of the entries (the
encoded size of the events each one folded, roughly) add up to more than ``max_bytes``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import msgspec

from ow_es.models import Event, WorkflowRun
from ow_es.runtime.history import History
from ow_es.store import Store

_EVENT_OVERHEAD = 64  # bytes counted per event beside its encoded data (its seq, type, time)
_encode = msgspec.json.Encoder().encode


@dataclass
class Replayed:
    """A run's history as its events up to ``history.seq`` fold it."""

    history: History
    size: int  # approximate bytes: the encoded size of the events folded in
    created_at: datetime  # the run's, to tell it from another run that took its id


def size_of(events: list[Event]) -> int:
    return sum(len(_encode(event.data)) + _EVENT_OVERHEAD for event in events)


class ReplayCache:
    """Replay states by run id, least recently put first, bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("a replay cache needs at least one byte (0 turns it off)")
        self.max_bytes = max_bytes
        self.bytes = 0  # the sizes of the entries held, added up
        self._entries: OrderedDict[str, Replayed] = OrderedDict()
        # Loads of a run's history: from an entry and the newer events, or read whole.
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._entries

    def put(self, run_id: str, replayed: Replayed) -> None:
        """Keep the state of a run we parked; evict the oldest entries while over the bound.
        A state larger than the whole cache is not kept."""
        self.take(run_id)
        if replayed.size > self.max_bytes:
            return
        self._entries[run_id] = replayed
        self.bytes += replayed.size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size

    def take(self, run_id: str) -> Replayed | None:
        """The run's state, removed from the cache: the caller alone may change it."""
        replayed = self._entries.pop(run_id, None)
        if replayed is not None:
            self.bytes -= replayed.size
        return replayed


async def replay(store: Store, run: WorkflowRun, cache: ReplayCache | None) -> Replayed:
    """The claimed ``run``'s history, as a full read of its events would fold it: from the
    cache and the events after the cached state when nothing casts doubt on them, else read
    whole. (Without a cache, no size is counted.)"""
    cached = cache.take(run.id) if cache is not None else None
    if run.seq == 2:  # created, then this claim: nothing to replay, skip a read
        history = History(seq=2, claim_token=run.claim_token)
        return Replayed(history, 2 * _EVENT_OVERHEAD, run.created_at)
    if cache is not None and cached is not None and _may_follow(cached, run):
        newer = await store.read_run_events(run.id, after=cached.history.seq)
        if follows(cached.history.seq, newer, run):
            cache.hits += 1
            cached.history.extend(newer)
            cached.size += size_of(newer)
            return cached
    events = await store.read_run_events(run.id)
    if cache is None:
        return Replayed(History.of(events), 0, run.created_at)
    cache.misses += 1
    return Replayed(History.of(events), size_of(events), run.created_at)


def _may_follow(cached: Replayed, run: WorkflowRun) -> bool:
    """The entry is of this run (not of another that took its id) and older than its claim."""
    return cached.created_at == run.created_at and cached.history.seq < run.seq


def follows(seq: int, newer: list[Event], run: WorkflowRun) -> bool:
    """``newer`` goes on from seq ``seq`` without a gap, up to at least this claim, and holds
    no claim but this one."""
    if not newer or newer[0].seq != seq + 1 or newer[-1].seq < run.seq:
        return False
    if newer[-1].seq - newer[0].seq != len(newer) - 1:  # seqs are unique: then no gap
        return False
    claims = [e.data.get("claim_token") for e in newer if e.type == "run_claimed"]
    return claims == [run.claim_token]
