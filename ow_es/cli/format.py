"""Plain-text views of runs, step attempts and events for ``ow-es runs``; JSON for --json."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from ow_es.cli.common import iso
from ow_es.models import Event, RunPage, StepAttempt, WorkflowRun

_CLIP = 60  # characters of a payload shown inline
_TIME_KEYS = frozenset({"until", "lease_until", "available_at", "deadline_at"})
# The facts of an event worth a glance, in reading order; payloads are clipped.
_EVENT_KEYS = (
    "workflow_name",
    "version",
    "key",
    "priority",
    "step_name",
    "kind",
    "attempt",
    "signal_name",
    "child_run_id",
    "status",
    "worker_id",
    "until",
    "lease_until",
    "available_at",
    "deadline_at",
    "final",
    "reason",
    "cascaded_from",
    "sender_run_id",
    "delivered_to",
    "idempotency_key",
    "error",
    "previous_error",
    "input",
    "output",
    "data",
)
_SHORT = {
    "workflow_name": "workflow",
    "step_name": "step",
    "signal_name": "signal",
    "child_run_id": "child",
    "sender_run_id": "sender",
    "worker_id": "worker",
}


# A claim's fencing token lets its holder write to the run: it is never printed.
_SECRET_FIELDS = frozenset({"claim_token"})


def to_json(value: Any) -> str:
    """Indented JSON; msgspec writes datetimes as ISO-8601 strings."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in _SECRET_FIELDS}


def run_record(run: WorkflowRun) -> dict[str, Any]:
    """A run row for --json, without its claim token."""
    return _public(msgspec.to_builtins(run))


def event_record(event: Event) -> dict[str, Any]:
    """An event for --json; a ``run_claimed`` event's data without its claim token."""
    record: dict[str, Any] = msgspec.to_builtins(event)
    record["data"] = _public(record["data"])
    return record


def page_record(page: RunPage) -> dict[str, Any]:
    return {"runs": [run_record(run) for run in page.runs], "next_cursor": page.next_cursor}


def clip(value: Any) -> str:
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text if len(text) <= _CLIP else text[: _CLIP - 3] + "..."


def time_text(value: Any) -> str:
    """An ISO string from the JSON side, shown like the row times."""
    if isinstance(value, str):
        try:
            return iso(datetime.fromisoformat(value))
        except ValueError:
            return value
    return iso(value) if isinstance(value, datetime) else str(value)


def error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "-"
    return f"{error.get('type', 'Error')}: {error.get('message', '')}".strip()


def waiting_text(waiting: dict[str, Any] | None) -> str:
    """``sleep step=nap until ...``: why a running run has no worker."""
    if not waiting:
        return "-"
    parts = [str(waiting.get("kind", "?"))]
    for key in ("step", "name", "run_id"):
        if waiting.get(key) is not None:
            parts.append(f"{key}={waiting[key]}")
    if waiting.get("until") is not None:
        parts.append(f"until {time_text(waiting['until'])}")
    return " ".join(parts)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns; the last column is not padded."""
    body = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(headers))]
    lines = []
    for row in body:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def held_back_text(reason: str) -> str:
    """Why a ready run waits when a limit keeps it from being claimed."""
    return f"held back by a limit: {reason}"


def runs_table(runs: Sequence[WorkflowRun], held_back: Mapping[str, str] | None = None) -> str:
    """One line per run; ``held_back``: the reasons of the ready runs a limit keeps waiting,
    by run id (shown as why they wait)."""
    held_back = held_back or {}
    headers = (
        *("ID", "WORKFLOW", "VERSION", "STATUS", "KEY", "PRIORITY"),
        *("ATTEMPTS", "CREATED", "UPDATED", "WAITING"),
    )
    rows = (
        (
            run.id,
            run.workflow_name,
            run.version or "-",
            run.status,
            run.key if run.key is not None else "-",
            str(run.priority),
            str(run.attempts),
            iso(run.created_at),
            iso(run.updated_at),
            held_back_text(held_back[run.id])
            if run.id in held_back
            else waiting_text(run.waiting_for),
        )
        for run in runs
    )
    return table(headers, rows)


def run_details(
    run: WorkflowRun, *, schedule: str | None = None, held_back: str | None = None
) -> str:
    """The row of a run, with the schedule it came from and, for a ready run a limit keeps
    waiting, why."""
    waiting = held_back_text(held_back) if held_back else waiting_text(run.waiting_for)
    fields = [
        ("workflow", run.workflow_name + (f" (version {run.version})" if run.version else "")),
        ("status", run.status),
        ("key", run.key if run.key is not None else "-"),
        ("priority", str(run.priority)),
        ("schedule", schedule or "-"),
        ("attempts", str(run.attempts)),
        ("created", iso(run.created_at)),
        ("started", iso(run.started_at)),
        ("finished", iso(run.finished_at)),
        ("updated", iso(run.updated_at)),
        ("available", iso(run.available_at)),
        ("deadline", iso(run.deadline_at)),
        (
            "worker",
            f"{run.worker_id} (lease until {iso(run.lease_until)})" if run.worker_id else "-",
        ),
        ("waiting for", waiting),
        ("idempotency", run.idempotency_key or "-"),
        ("parent", run.parent_run_id or "-"),
        ("input", clip(run.input)),
        ("output", clip(run.output) if run.status == "completed" else "-"),
        ("error", error_text(run.error)),
    ]
    return "\n".join([f"run {run.id}", *(f"  {name:<12} {value}" for name, value in fields)])


def steps_table(steps: Sequence[StepAttempt]) -> str:
    if not steps:
        return "steps: none"
    rows = (
        (
            step.step_name,
            str(step.attempt),
            step.kind,
            step.status,
            iso(step.started_at, millis=True),
            iso(step.finished_at, millis=True),
            _step_detail(step),
        )
        for step in steps
    )
    headers = ("STEP", "ATTEMPT", "KIND", "STATUS", "STARTED", "FINISHED", "DETAIL")
    return f"steps ({len(steps)} attempts)\n" + _indent(table(headers, rows))


def _step_detail(step: StepAttempt) -> str:
    if step.error:
        return error_text(step.error)
    facts = []
    if step.signal_name:
        facts.append(f"signal={step.signal_name}")
    if step.child_run_id:
        facts.append(f"child={step.child_run_id}")
    if step.status == "completed":
        facts.append(f"output={clip(step.output)}")
    return " ".join(facts)


def timeline(events: Sequence[Event]) -> str:
    rows = (
        (str(e.seq), iso(e.created_at, millis=True), e.type, event_facts(e.data)) for e in events
    )
    return f"history ({len(events)} events)\n" + _indent(
        table(("SEQ", "TIME", "TYPE", "DETAILS"), rows)
    )


def event_facts(data: dict[str, Any]) -> str:
    """``step=charge attempt=2 worker=... error=ValueError: boom``, in a stable order."""
    facts = []
    for key in _EVENT_KEYS:
        value = data.get(key)
        if value is None or value == [] or (key == "priority" and value == 0):
            continue  # the default priority is not worth a word
        if key in ("error", "previous_error"):
            text = error_text(value)
        elif key in _TIME_KEYS:
            text = time_text(value)
        else:
            text = clip(value)
        facts.append(f"{_SHORT.get(key, key)}={text}")
    return " ".join(facts)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
