"""What replay needs from a run's history: recorded step results, failures, waits."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from datetime import datetime

from ow_es import events as ev
from ow_es.models import Event


@dataclass
class History:
    seq: int = 0
    claim_token: str | None = None
    completed: dict[str, ev.StepCompleted] = field(default_factory=dict)
    # Failures since the last resume (or body retry), which count against a step's budget.
    failures: dict[str, int] = field(default_factory=dict)
    # The highest attempt number recorded per step (never reset: rows are per attempt).
    attempts: dict[str, int] = field(default_factory=dict)
    final_failures: dict[str, ev.StepFailed] = field(default_factory=dict)
    retry_until: dict[str, datetime] = field(default_factory=dict)
    started: dict[str, ev.StepStarted] = field(default_factory=dict)
    started_at: dict[str, datetime] = field(default_factory=dict)
    signals: dict[str, ev.SignalReceived] = field(default_factory=dict)
    child_finished: dict[str, ev.ChildFinished] = field(default_factory=dict)
    function_attempts: int = 0
    # Function step attempts started but never finished (their worker was lost mid-step).
    unfinished: dict[str, ev.StepStarted] = field(default_factory=dict)
    # Claims in a row that ended with the executor crashing (a park, a plain release or a
    # resume ends the row), and the last crash's error.
    crashes: int = 0
    last_crash: dict[str, object] | None = None
    # RetryAfter suspensions per step (they spend no attempt of its budget).
    suspensions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, events: list[Event]) -> History:
        history = cls()
        history.extend(events)
        return history

    def extend(self, events: list[Event]) -> None:
        """Fold these events (the run's next ones, in order) in."""
        for event in events:
            self.add(
                event.seq,
                event.created_at,
                ev.decode_data(event.type, event.schema_version, event.data),
            )

    def copy(self) -> History:
        """A copy that changes apart from this one (the event structs in it are shared:
        nothing changes them)."""
        return replace(self, **{f.name: copy.copy(getattr(self, f.name)) for f in fields(self)})

    def add(self, seq: int, at: datetime, data: ev.EventData) -> None:
        self.seq = max(self.seq, seq)
        match data:
            case ev.RunClaimed():
                self.claim_token = data.claim_token
            case ev.StepStarted():
                self._attempted(data.step_name, data.attempt)
                self.started[data.step_name] = data
                self.started_at[data.step_name] = at
                if data.kind == "function":
                    self.unfinished[data.step_name] = data
            case ev.StepCompleted():
                self._attempted(data.step_name, data.attempt)
                self.unfinished.pop(data.step_name, None)
                self.completed[data.step_name] = data
                self.final_failures.pop(data.step_name, None)
                if data.kind == "function":
                    self.function_attempts += 1
            case ev.StepFailed():
                self._failed(data)
            case ev.RetryScheduled():
                self.crashes = 0
                if data.step_name is None:
                    self._fresh_budgets()
                else:
                    self.retry_until[data.step_name] = data.until
            case ev.RunResumed():
                self._fresh_budgets()
                self.crashes = 0
            case ev.RunReleased():
                self.crashes = self.crashes + 1 if data.error is not None else 0
                self.last_crash = data.error or self.last_crash
            case ev.RunSleeping() | ev.RunWaiting():
                self.crashes = 0
            case ev.SignalReceived():
                self.signals[data.step_name] = data
            case ev.ChildFinished():
                self.child_finished[data.step_name] = data
            case _:
                pass

    def _failed(self, data: ev.StepFailed) -> None:
        self._attempted(data.step_name, data.attempt)
        self.unfinished.pop(data.step_name, None)
        if data.kind == "function":
            self.function_attempts += 1  # it ran, even abandoned: a step killing workers is bounded
        if data.abandoned:
            return  # a lost worker's attempt never counts against the retry budget
        if not data.counted:
            self.suspensions[data.step_name] = self.suspensions.get(data.step_name, 0) + 1
            return
        self.failures[data.step_name] = self.failures.get(data.step_name, 0) + 1
        if data.final:
            self.final_failures[data.step_name] = data

    def _attempted(self, step_name: str, attempt: int) -> None:
        self.attempts[step_name] = max(self.attempts.get(step_name, 0), attempt)

    def _fresh_budgets(self) -> None:
        """After a resume or a body retry, earlier step failures no longer count, and a step
        that failed for good starts anew (a child step starts a new child)."""
        for name in self.final_failures:
            self.started.pop(name, None)
            self.started_at.pop(name, None)
            self.child_finished.pop(name, None)
        self.failures.clear()
        self.final_failures.clear()
        self.retry_until.clear()
