"""The chaos tests' auditors (``tests/support/auditors.py``) catch what they are meant to
catch, and accept what is allowed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import ow_es
from tests.support.auditors import audit_executions, audit_log, superseded, takeovers


def _event(seq: int, type_: str, **data: Any) -> ow_es.Event:
    at = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=seq)
    return ow_es.Event(
        namespace_id="default", run_id="r", position=seq, seq=seq, type=type_,
        schema_version=1, data=data, created_at=at,
    )  # fmt: skip


def _claim(seq: int, worker: str, lease_s: int = 1) -> ow_es.Event:
    until = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=seq + lease_s)
    return _event(seq, "run_claimed", worker_id=worker, lease_until=until.isoformat())


def test_audit_log_accepts_a_clean_takeover() -> None:
    events = [
        _event(1, "run_created"),
        _claim(2, "h:1:x"),
        _event(3, "step_completed", step_name="a", attempt=1, worker_id="h:1:x"),
        _claim(4, "h:2:y"),  # after h:1:x's lease (until second 3)
        _event(5, "step_completed", step_name="b", attempt=1, worker_id="h:2:y"),
        _event(6, "run_completed", worker_id="h:2:y"),
    ]
    assert audit_log(events) == []


def test_audit_log_catches_a_stale_writer_a_gap_an_early_takeover_and_a_duplicate() -> None:
    events = [
        _event(1, "run_created"),
        _claim(2, "h:1:x", lease_s=10),
        _claim(3, "h:2:y"),  # before h:1:x's lease ran out
        _event(4, "step_completed", step_name="a", attempt=1, worker_id="h:1:x"),  # stale
        _event(5, "step_completed", step_name="a", attempt=1, worker_id="h:2:y"),  # twice
        _event(7, "run_completed", worker_id="h:2:y"),  # gap at 6
        _event(8, "run_completed", worker_id="h:2:y"),
    ]
    text = "\n".join(audit_log(events))
    for needle in ("not gapless", "before the claim's lease", "written by h:1:x",
                   "appended 2 times", "completed 2 times", "ended 2 times"):  # fmt: skip
        assert needle in text


def test_audit_executions_allows_only_interrupted_reruns() -> None:
    events = [
        _event(1, "run_created"),
        _claim(2, "h:10:x"),
        _claim(3, "h:20:y"),
        _event(4, "step_completed", step_name="a", attempt=2, kind="function", worker_id="h:20:y"),
    ]
    ran = [("a", 10, 0.0), ("a", 20, 1.0)]
    assert audit_executions(events, ran, interrupted={10}) == []
    assert "never interrupted" in "\n".join(audit_executions(events, ran, interrupted=set()))
    stranger = [*ran, ("a", 30, 2.0)]
    assert "never claimed" in "\n".join(audit_executions(events, stranger, interrupted={10, 30}))
    assert "no completion" in "\n".join(audit_executions(events, [("b", 20, 0.0)], set()))


def test_only_lost_claims_count_as_interruptions() -> None:
    events = [
        _event(1, "run_created"),
        _claim(2, "h:1:x"),
        _event(3, "run_sleeping", step_name="nap", worker_id="h:1:x"),  # parked: not lost
        _claim(4, "h:2:y"),
        _claim(6, "h:3:z"),  # h:2:y's lease ran out: lost
        _event(7, "run_released", worker_id="h:3:z"),  # released: lost
        _claim(8, "h:1:x"),
        _event(9, "run_completed", worker_id="h:1:x"),
    ]
    assert superseded(events) == {2, 3}
    assert takeovers(events) == 1
    ran = [("a", 1, 0.0), ("a", 1, 1.0)]  # h:1:x ran "a" under each of its two claims...
    completed = _event(10, "step_completed", step_name="a", kind="function", worker_id="h:1:x")
    assert "never interrupted" in "\n".join(audit_executions([*events, completed], ran, set()))
    thrice = [*ran, ("a", 1, 2.0)]  # ...but not three times
    assert "more than once per claim" in "\n".join(
        audit_executions([*events, completed], thrice, {1})
    )
