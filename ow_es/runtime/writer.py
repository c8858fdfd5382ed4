"""The one submit path of a claimed run: every write the runtime makes for it (step records,
parks, its end, the children it starts, the signals it sends) goes through here, fenced by the
claim, through the group committer, exactly once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from ow_es import events as ev
from ow_es.errors import ConcurrencyError, InvalidTransition, StaleRun, StoreUnavailable
from ow_es.models import Event, WorkflowRun
from ow_es.runtime.committer import GroupCommitter
from ow_es.runtime.unwind import RunLost, Stale
from ow_es.store import Appended, AppendRequest, Outcome, SignalSend, Store

log = logging.getLogger("ow_es.executor")


class RunWriter:
    def __init__(self, run: WorkflowRun, committer: GroupCommitter, store: Store) -> None:
        assert run.claim_token is not None
        self.run_id = run.id
        self.token: str = run.claim_token
        self.seq = run.seq  # the run's last event as far as our own appends know
        self._row: WorkflowRun | None = run  # the row as of our last append, while current
        self._committer = committer
        self._store = store

    async def append(
        self,
        events: list[ev.EventData],
        *,
        expect: bool = False,
        child: AppendRequest | None = None,
        signal: SignalSend | None = None,
    ) -> Appended:
        """Append ``events`` under our claim (``expect``: only if nothing else was appended
        since our last write). Raises ``Stale`` when the run changed, ``RunLost`` when the
        claim is gone."""
        request = AppendRequest(
            run_id=self.run_id,
            events=events,
            claim_token=self.token,
            expected_seq=self.seq if expect else None,
            known=self._row if self._row is not None and self._row.seq == self.seq else None,
            child=child,
            signal=signal,
        )
        outcome = await self._submit(request)
        if isinstance(outcome, StaleRun):
            raise Stale()
        if isinstance(outcome, ConcurrencyError | InvalidTransition):
            raise RunLost()
        if not isinstance(outcome, Appended):
            raise outcome
        self._advance(outcome)
        return outcome

    @property
    def last_row(self) -> WorkflowRun | None:
        """The run's row as our last append left it."""
        return self._row

    def _advance(self, outcome: Appended) -> None:
        """Follow our own appends. If someone else appended in between (a signal, a child's
        end), ``seq`` stays behind, so the next expecting write (a park) fails as stale and the
        run is replayed with those events instead of parking past them."""
        if outcome.first_seq == self.seq + 1:
            self.seq = outcome.run.seq
            self._row = outcome.run

    async def _submit(self, request: AppendRequest) -> Outcome:
        """Append exactly once. When a commit's outcome is unknown (a dropped connection), find
        out from the log whether it landed before sending anything again; a resend is
        conditioned on the run being unchanged since that read, so a late landing of the first
        commit cannot be doubled."""
        # Where to look for it: our own parallel appends may move ``self.seq`` on meanwhile.
        after = self.seq
        attempt = request
        for _ in range(8):
            try:
                outcome = await self._committer.submit(attempt)
            except StoreUnavailable as exc:
                log.warning("run %s: append outcome unknown (%s); re-reading", self.run_id, exc)
            else:
                resent = attempt is not request and request.expected_seq is None
                if not (resent and isinstance(outcome, StaleRun)):
                    return outcome
                # The run changed since we looked: perhaps our first commit landed after all.
            landed, seq = await self._find_out(request, after)
            if landed is not None:
                return landed
            expected = request.expected_seq if request.expected_seq is not None else seq
            attempt = msgspec.structs.replace(request, expected_seq=expected)
        raise RunLost()

    async def _find_out(self, request: AppendRequest, after: int) -> tuple[Appended | None, int]:
        """Whether ``request`` is in the log after seq ``after`` (as an Appended), else the
        run's last seq."""
        delay = 0.1
        for _ in range(10):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                events = await self._store.read_run_events(self.run_id)
                run = await self._store.get_run(self.run_id)
                landed = _landed(request, events, after)
                if run is None or not events:
                    raise RunLost()
                if landed is None:
                    return None, events[-1].seq
                first, delivered, child_id = landed
                child = await self._store.get_run(child_id) if child_id else None
            except StoreUnavailable:
                continue  # still cannot tell: never guess "not landed"
            return Appended(run=run, first_seq=first, child=child, delivered=delivered), 0
        raise RunLost()


def _signature(event_type: str, data: dict[str, Any]) -> tuple[Any, ...]:
    """What tells one of our events apart: a run's step attempts are unique by name and
    attempt, and only the claim holder writes run-level events. (The transaction fills some
    fields in, such as the runs a signal reached, so the data is not compared whole.)"""
    return (event_type, data.get("step_name"), data.get("attempt"), data.get("worker_id"))


def _landed(
    request: AppendRequest, events: list[Event], after: int
) -> tuple[int, list[str] | None, str | None] | None:
    """Where the request's events were appended after ``after`` (their first seq, the runs its
    signal reached, the child it started), if they were."""
    mine = [_signature(e.TYPE, ev.to_dict(e)) for e in request.events]
    newer = [e for e in events if e.seq > after]
    for start in range(len(newer) - len(mine) + 1):
        window = newer[start : start + len(mine)]
        if [_signature(e.type, e.data) for e in window] == mine:
            delivered = None
            if request.signal is not None:
                sent = newer[start + len(mine)]
                delivered = list(sent.data.get("delivered_to") or [])
            child_id = window[0].data.get("child_run_id") if request.child else None
            return window[0].seq, delivered, child_id
    return None
