"""Durable waits: ``ctx.step.sleep`` / ``sleep_until``, ``wait_for_signal``, ``send_signal``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ow_es import events as ev
from ow_es.durations import Duration, to_seconds, utcnow
from ow_es.payload import check_name, to_json_value
from ow_es.runtime.steps.host import StepHost
from ow_es.runtime.unwind import Park
from ow_es.store import SignalSend


async def sleep(
    ex: StepHost, name: str, *, duration: Duration | None = None, until: datetime | None = None
) -> None:
    name = ex.unique_name(name)
    if name in ex.history.completed:
        return
    started = ex.history.started.get(name)
    if started is not None and isinstance(started.input, dict):
        wake = datetime.fromisoformat(started.input["until"])
        started_at = ex.history.started_at[name]
    else:
        ex.check_active()
        wake = (
            until
            if until is not None
            else utcnow() + timedelta(seconds=to_seconds(duration or 0, "sleep duration"))
        )
        if wake.tzinfo is None:
            raise ValueError("sleep_until needs a timezone-aware datetime")
        appended = await ex.append(
            [
                ev.StepStarted(
                    step_name=name,
                    kind="sleep",
                    attempt=1,
                    input={"until": wake.isoformat()},
                    worker_id=ex.worker_id,
                )
            ]
        )
        started_at = appended.run.updated_at
    while wake > utcnow():
        await _park(ex, Park("sleep", name, wake))  # held: is the sleep over now?
    await ex.append(
        [
            ev.StepCompleted(
                step_name=name,
                kind="sleep",
                attempt=1,
                started_at=started_at,
                worker_id=ex.worker_id,
            )
        ]
    )


async def _park(ex: StepHost, park: Park) -> None:
    """Park the run: unwind (raise the park), or, where the worker holds the run, return when
    its next claim of the run goes on here, with the events since folded into the history
    (runtime/held.py)."""
    if not await ex.hold(park):
        raise ex.parking(park)


async def wait_for_signal(
    ex: StepHost, signal: str, *, timeout: Duration | None, name: str | None
) -> Any:
    name = ex.unique_name(name or check_name(signal, "signal name"))
    completed = ex.history.completed.get(name)
    if completed is not None:
        return completed.output
    received = ex.history.signals.get(name)
    if received is not None:
        return received.data
    started = ex.history.started.get(name)
    if started is None:
        ex.check_active()
        wake = (
            None
            if timeout is None
            else utcnow() + timedelta(seconds=to_seconds(timeout, "timeout"))
        )
        appended = await ex.append(
            [
                ev.StepStarted(
                    step_name=name,
                    kind="signal_wait",
                    attempt=1,
                    signal_name=signal,
                    input={"until": wake.isoformat() if wake else None},
                    worker_id=ex.worker_id,
                )
            ]
        )
        started_at = appended.run.updated_at
    else:
        raw = started.input.get("until") if isinstance(started.input, dict) else None
        wake = datetime.fromisoformat(raw) if raw else None
        started_at = ex.history.started_at[name]
    while wake is None or wake > utcnow():
        await _park(ex, Park("signal", name, wake, signal=signal))  # held: the signal came?
        received = ex.history.signals.get(name)
        if received is not None:
            return received.data
    # expect=True: a signal delivered meanwhile makes this stale instead of lost.
    await ex.append(
        [
            ev.StepCompleted(
                step_name=name,
                kind="signal_wait",
                attempt=1,
                output=None,
                signal_name=signal,
                started_at=started_at,
                worker_id=ex.worker_id,
            )
        ],
        expect=True,
    )
    return None


async def send_signal(ex: StepHost, signal: str, data: Any, *, name: str | None) -> list[str]:
    name = ex.unique_name(name or f"send:{check_name(signal, 'signal name')}")
    completed = ex.history.completed.get(name)
    if completed is not None:
        return list(completed.output or [])
    ex.check_active()
    value = to_json_value(data, f"signal {signal!r} data", ex.max_payload_bytes)
    completed = ev.StepCompleted(
        step_name=name,
        kind="signal_send",
        attempt=1,
        output=[],  # the runs the signal reached, filled in by the transaction that sends it
        signal_name=signal,
        started_at=utcnow(),
        worker_id=ex.worker_id,
    )
    send = SignalSend(signal_name=signal, data=value, step_name=name)
    recorded = await ex.tracked(ex.append([completed], signal=send))
    return list(recorded.delivered or [])
