"""Inline projections always equal a fold of the whole log from scratch.

A hypothesis state machine drives random valid event sequences of many runs through the store
(batched as the inline path writes them) and after every step compares the live
``workflow_runs``/``step_attempts`` rows with ``fold_log`` over the log, leaving out only the
coordination column ``lease_until``. At the end every event type must have been exercised.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import ow_es
from ow_es import events as ev
from ow_es.models import WorkflowRun
from ow_es.projections import fold_log
from ow_es.store import Appended, AppendRequest, SignalSend
from ow_es.store.codec import recorded_from_event

pytestmark = pytest.mark.slow  # a long property search (a minute over both backends)

WORKFLOW = ("wf", None)


def _now() -> datetime:
    return datetime.now(UTC)


def _comparable(run: WorkflowRun) -> WorkflowRun:
    return msgspec.structs.replace(run, lease_until=None)


class ProjectionMachine(RuleBasedStateMachine):
    url: str
    schema: str | None
    exercised: set[str]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = ow_es.OpenWorkflow(
            self.url, namespace=f"ns-{uuid.uuid4().hex[:10]}", schema=self.schema
        )
        self.do(self.client.connect())
        self.rows: dict[str, WorkflowRun] = {}
        self.counter = 0

    def do(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.do(self.client.close())
        self.loop.close()

    # -- helpers ---------------------------------------------------------------------------
    # Rules draw all their data up front (as rule arguments), never depending on database
    # state, so hypothesis can replay and shrink examples exactly.

    def _runs(self, predicate: Any) -> list[WorkflowRun]:
        return sorted((r for r in self.rows.values() if predicate(r)), key=lambda r: r.id)

    def _claimed(self) -> list[WorkflowRun]:
        return self._runs(lambda r: r.claim_token is not None and r.status == "running")

    @staticmethod
    def _pick(pick: int, items: list[WorkflowRun]) -> WorkflowRun | None:
        return items[pick % len(items)] if items else None

    def _append(self, requests: list[AppendRequest]) -> list[Any]:
        return list(self.do(self.client.store.append(requests)))

    def _fenced(self, run: WorkflowRun, *events: ev.EventData, hint: str = "none") -> AppendRequest:
        """``hint``: the row the writer believes current, as a worker passes it (Postgres then
        appends in one statement when it is); "stale" is one append behind."""
        known = {
            "none": None,
            "current": run,
            "stale": msgspec.structs.replace(run, seq=run.seq - 1),
        }[hint]
        return AppendRequest(
            run_id=run.id, claim_token=run.claim_token, events=list(events), known=known
        )

    def _new_id(self) -> str:
        self.counter += 1
        return f"r{self.counter:03d}"

    # -- rules -----------------------------------------------------------------------------

    @initialize()
    def a_tour_of_every_event_type(self) -> None:
        """Start from a state that has seen every event type once (the rarer ones are unlikely
        in short random sequences); the random rules go on from there."""
        self.create_runs(4, keyed=False, deadline=True)  # the first is past its deadline
        self.create_runs(4, keyed=True, deadline=False)
        tour: tuple[Callable[[], object], ...] = (
            lambda: self.claim(8),  # run_claimed, and run_failed for the deadline
            lambda: self.steps([(0, 0, "started", False), (1, 1, "completed", False)]),
            lambda: self.steps([(2, 2, "failed", True)], "current"),
            lambda: self.park(0, "sleep"),
            lambda: self.park(0, "retry"),
            lambda: self.wait_then_signal(0, keyed=False, from_run=True),
            lambda: self.end_a_child(0),  # child_started, run_waiting, child_finished
            lambda: self.claim(10),
            lambda: self.finish(0, "complete", "current"),
            lambda: self.finish(0, "release"),
            lambda: self.resume_or_wake(0),
            lambda: self.claim(10),
            lambda: self.finish(0, "fail"),
            lambda: self.resume_or_wake(1),  # the failed run after r001 (failed by its deadline)
        )
        for action in tour:
            action()
            self.rows = self._live_rows()

    @rule(count=st.integers(1, 4), keyed=st.booleans(), deadline=st.booleans())
    def create_runs(self, count: int, keyed: bool, deadline: bool) -> None:
        requests = [
            AppendRequest(
                run_id=self._new_id(),
                events=[
                    ev.RunCreated(
                        workflow_name="wf",
                        input={"i": i},
                        idempotency_key=f"k{self.counter % 3}" if keyed else None,
                        available_at=_now(),
                        deadline_at=_now() - timedelta(seconds=1) if deadline and i == 0 else None,
                    )
                ],
            )
            for i in range(count)
        ]
        self._append(requests)

    @rule(limit=st.integers(1, 5))
    def claim(self, limit: int) -> None:
        self.do(self.client.store.claim("worker-1", [WORKFLOW], limit, 30))

    @rule(
        picks=st.lists(
            st.tuples(
                st.integers(0, 1000),
                st.integers(0, 3),
                st.sampled_from(["started", "completed", "failed"]),
                st.booleans(),
            ),
            min_size=1,
            max_size=4,
        ),
        hint=st.sampled_from(["none", "current", "stale"]),
    )
    def steps(self, picks: list[tuple[int, int, str, bool]], hint: str = "none") -> None:
        claimed = self._claimed()
        requests = []
        for pick, number, kind, final in picks:  # a run may appear twice, as parallel steps do
            run = self._pick(pick, claimed)
            if run is None:
                return
            name = f"s{number}"
            if kind == "started":
                event: ev.EventData = ev.StepStarted(step_name=name, kind="function", attempt=1)
            elif kind == "completed":
                event = ev.StepCompleted(
                    step_name=name, kind="function", attempt=1, output=[1], started_at=_now()
                )
            else:
                error = {"type": "E", "message": "m", "traceback": "t"}
                event = ev.StepFailed(
                    step_name=name, kind="function", attempt=2, error=error,
                    started_at=_now(), final=final,
                )  # fmt: skip
            requests.append(self._fenced(run, event, hint=hint))
        self._append(requests)

    @rule(
        pick=st.integers(0, 1000),
        how=st.sampled_from(["sleep", "signal", "child", "retry", "body"]),
    )
    def park(self, pick: int, how: str) -> None:
        run = self._pick(pick, self._claimed())
        if run is None:
            return
        past = _now() - timedelta(milliseconds=1)
        if how == "sleep":
            self._append([self._fenced(run, ev.RunSleeping(step_name="nap", until=past))])
        elif how == "retry":
            self._append(
                [self._fenced(run, ev.RetryScheduled(step_name="s1", attempt=2, until=past))]
            )
        elif how == "body":
            retry = ev.RetryScheduled(step_name=None, attempt=run.attempts + 1, until=past)
            self._append([self._fenced(run, retry)])
        elif how == "signal":
            self._append(
                [
                    self._fenced(
                        run,
                        ev.StepStarted(
                            step_name="wait", kind="signal_wait", attempt=1, signal_name="go"
                        ),
                        ev.RunWaiting(step_name="wait", kind="signal", signal_name="go"),
                    )
                ]
            )
        else:
            self._start_child(run)

    def _start_child(self, run: WorkflowRun) -> None:
        child = AppendRequest(
            run_id=self._new_id(),
            events=[
                ev.RunCreated(
                    workflow_name="wf",
                    parent_run_id=run.id,
                    parent_step_name="child",
                    idempotency_key=f"{run.id}/child",
                    available_at=_now(),
                )
            ],
        )
        (created,) = self._append([child])
        assert isinstance(created, Appended)
        child_id = created.run.id
        self._append(
            [
                self._fenced(
                    run,
                    ev.StepStarted(
                        step_name="child", kind="workflow", attempt=1, child_run_id=child_id
                    ),
                    ev.ChildStarted(step_name="child", child_run_id=child_id, workflow_name="wf"),
                    ev.RunWaiting(step_name="child", kind="child", child_run_id=child_id),
                )
            ]
        )

    @rule(pick=st.integers(0, 1000), keyed=st.booleans(), from_run=st.booleans())
    def wait_then_signal(self, pick: int, keyed: bool, from_run: bool) -> None:
        """Park a run on a signal, then deliver it (both rare alone in short sequences)."""
        self.park(pick, "signal")
        self.rows = self._live_rows()
        self.signal(keyed, from_run)

    @rule(keyed=st.booleans(), from_run=st.booleans())
    def signal(self, keyed: bool, from_run: bool) -> None:
        sender = None
        claimed = self._claimed()
        if from_run and claimed:
            sender = self._fenced(
                claimed[0],
                ev.StepCompleted(
                    step_name="send:go", kind="signal_send", attempt=1, output=[], started_at=_now()
                ),
            )
        if sender is not None:
            send = SignalSend(signal_name="go", data={"ok": True}, step_name="send:go")
            # A stale sender rolls the whole delivery back.
            self.do(self.client.store.append([msgspec.structs.replace(sender, signal=send)]))
        else:
            key = "sig-key" if keyed else None
            self.do(self.client.store.send_signal("go", {"ok": True}, key))

    @rule(
        pick=st.integers(0, 1000),
        end=st.sampled_from(["complete", "fail", "cancel", "release"]),
        hint=st.sampled_from(["none", "current", "stale"]),
    )
    def finish(self, pick: int, end: str, hint: str = "none") -> None:
        if end == "cancel":
            run = self._pick(pick, self._runs(lambda r: not r.is_terminal))
            if run is not None:
                self._append([AppendRequest(run_id=run.id, events=[ev.RunCanceled(reason="x")])])
            return
        run = self._pick(pick, self._claimed())
        if run is None:
            return
        event: ev.EventData = {
            "complete": ev.RunCompleted(output={"done": run.id}),
            "fail": ev.RunFailed(error={"type": "E", "message": "m", "traceback": "t"}),
            "release": ev.RunReleased(worker_id="worker-1", reason="stop"),
        }[end]
        self._append([self._fenced(run, event, hint=hint)])

    @rule(pick=st.integers(0, 1000))
    def end_a_child(self, pick: int) -> None:
        """A child's end is told to its parent (child_finished) in the same transaction."""
        children = self._runs(lambda r: r.parent_run_id is not None and not r.is_terminal)
        if not children:
            self.park(pick, "child")
            self.rows = self._live_rows()
            children = self._runs(lambda r: r.parent_run_id is not None and not r.is_terminal)
        run = self._pick(pick, children)
        if run is not None:
            self._append([AppendRequest(run_id=run.id, events=[ev.RunCanceled(reason="x")])])

    @rule(pick=st.integers(0, 1000))
    def resume_or_wake(self, pick: int) -> None:
        requests = []
        failed = self._pick(pick, self._runs(lambda r: r.status == "failed"))
        if failed is not None:
            resumed = ev.RunResumed(previous_error=failed.error)
            requests.append(AppendRequest(run_id=failed.id, events=[resumed]))
        waiting = self._pick(
            pick, self._runs(lambda r: r.status == "running" and r.claim_token is None)
        )
        if waiting is not None:
            requests.append(AppendRequest(run_id=waiting.id, events=[ev.RunWoken(reason="op")]))
        if requests:
            self._append(requests)

    @rule()
    def heartbeat_and_stale_write(self) -> None:
        claimed = self._claimed()
        if not claimed:
            return
        self.do(self.client.store.heartbeat({r.id: r.claim_token or "" for r in claimed}, 60))
        (outcome,) = self._append(
            [
                AppendRequest(
                    run_id=claimed[0].id, claim_token="stale", events=[ev.RunCompleted(output=None)]
                )
            ]
        )
        assert isinstance(outcome, ow_es.ConcurrencyError)

    def _live_rows(self) -> dict[str, WorkflowRun]:
        page = self.do(
            self.client.store.list_runs(status=None, workflow_name=None, limit=1000, cursor=None)
        )
        return {r.id: r for r in page.runs}

    # -- the property ----------------------------------------------------------------------

    @invariant()
    def projections_equal_a_fold_of_the_log(self) -> None:
        store = self.client.store
        # Nothing else appends to this namespace now: read the whole log without the barrier
        # (another session's open transaction anywhere in the cluster would hold it back).
        log = self.do(store.read_log(None, 100_000, barrier=False)).events
        ProjectionMachine.exercised.update(e.type for e in log)
        runs, steps = fold_log(recorded_from_event(e) for e in log)
        self.rows = self._live_rows()
        live_runs = list(self.rows.values())
        assert {k[1]: _comparable(r) for k, r in runs.items()} == {
            r.id: _comparable(r) for r in live_runs
        }
        live_steps = {}
        for run in live_runs:
            for step in self.do(store.step_attempts(run.id)):
                live_steps[(step.namespace_id, step.run_id, step.step_name, step.attempt)] = step
        assert steps == live_steps


def _run_machine(url: str, schema: str | None) -> None:
    ProjectionMachine.url = url
    ProjectionMachine.schema = schema
    ProjectionMachine.exercised = set()
    run_state_machine_as_test(  # type: ignore[no-untyped-call]  # untyped in hypothesis
        ProjectionMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    assert ProjectionMachine.exercised == set(ev.EVENT_TYPES), (
        f"never exercised: {set(ev.EVENT_TYPES) - ProjectionMachine.exercised}"
    )


def test_projections_match_fold_sqlite(tmp_path: Any) -> None:
    _run_machine(f"sqlite:///{tmp_path / 'fold.db'}", None)


def test_projections_match_fold_postgres(pg_url: str) -> None:
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        _run_machine(pg_url, schema)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
