"""The auditors of the chaos tests: they check the promise (nothing lost, nothing stranded,
every attempt kept, one owner at a time) on a run's event log, its ``step_attempts`` rows and
the step executions the chaos app recorded. ``tests/test_auditors.py`` proves that they catch
what they are meant to catch."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ow_es

STEP_EVENTS = ("step_started", "step_completed", "step_failed")
# Events after which the writer no longer owns the run (until a new claim).
OWNERSHIP_ENDS = frozenset(
    {
        "run_released",
        "run_sleeping",
        "run_waiting",
        "retry_scheduled",
        "run_completed",
        "run_failed",
        "run_canceled",
    }
)
TERMINAL = frozenset({"run_completed", "run_failed", "run_canceled"})


def pid_of(worker_id: str) -> int:
    """``ow-es worker`` ids are ``host:pid:random``."""
    return int(worker_id.rsplit(":", 2)[1])


def _time(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- auditors -------------------------------------------------------------------------------


def audit_log(events: Sequence[ow_es.Event]) -> list[str]:
    """The log-level promise for one run: a gapless stream, one owner at a time (every event
    that names a worker names the latest claimant, and only while it owns the run), no
    takeover before the previous claim's lease ran out, nothing appended twice."""
    problems: list[str] = []
    seqs = [e.seq for e in events]
    if seqs != list(range(1, len(events) + 1)):
        problems.append(f"seq is not gapless 1..n: {seqs}")
    owner: str | None = None
    lease_until: datetime | None = None
    for e in events:
        worker = e.data.get("worker_id")
        if e.type == "run_claimed":
            if owner is not None and lease_until is not None and e.created_at <= lease_until:
                problems.append(
                    f"seq {e.seq}: {worker} took over from {owner} at {e.created_at}, before "
                    f"the claim's lease ran out ({lease_until})"
                )
            owner, lease_until = worker, _time(e.data["lease_until"])
            continue
        if worker is not None and worker != owner:
            problems.append(f"seq {e.seq} {e.type} written by {worker} while the owner was {owner}")
        if e.type in OWNERSHIP_ENDS:
            owner = lease_until = None
    keyed = Counter(
        (e.type, e.data.get("step_name"), e.data.get("attempt"))
        for e in events
        if e.type in STEP_EVENTS
    )
    problems += [
        f"{k[0]} of step {k[1]!r} attempt {k[2]} appended {n} times"
        for k, n in keyed.items()
        if n > 1
    ]
    completed = Counter(e.data["step_name"] for e in events if e.type == "step_completed")
    problems += [f"step {s!r} completed {n} times" for s, n in completed.items() if n > 1]
    ends = [e.type for e in events if e.type in TERMINAL]
    if len(ends) > 1:
        problems.append(f"the run ended {len(ends)} times: {ends}")
    return problems


def audit_attempts(events: Sequence[ow_es.Event], rows: Sequence[ow_es.StepAttempt]) -> list[str]:
    """Every attempt kept: one ``step_attempts`` row per attempt seen in the log, numbered
    1..k per step with the completed attempt last, and no row the log does not explain."""
    problems: list[str] = []
    logged: dict[str, set[int]] = defaultdict(set)
    done: dict[str, int] = {}
    for e in events:
        if e.type in STEP_EVENTS:
            logged[e.data["step_name"]].add(int(e.data["attempt"]))
        if e.type == "step_completed":
            done[e.data["step_name"]] = int(e.data["attempt"])
    keys = Counter((r.step_name, r.attempt) for r in rows)
    problems += [f"{n} rows for attempt {k}" for k, n in keys.items() if n > 1]
    expected = {(s, a) for s, attempts in logged.items() for a in attempts}
    if set(keys) != expected:
        problems.append(
            f"step_attempts rows {sorted(keys)} differ from the logged attempts {sorted(expected)}"
        )
    for step, attempts in logged.items():
        if attempts != set(range(1, max(attempts) + 1)):
            problems.append(f"step {step!r} attempts are not 1..k: {sorted(attempts)}")
        if step in done and done[step] != max(attempts):
            problems.append(f"step {step!r} completed attempt {done[step]} is not the last")
    for row in rows:
        if done.get(row.step_name) == row.attempt and row.status != "completed":
            problems.append(f"row of completed attempt {row.step_name}#{row.attempt}: {row.status}")
    return problems


def read_executions(state: Path, run_id: str) -> list[tuple[str, int, float]]:
    """(step, pid, wall time) of every execution of a step of ``run_id``, in order."""
    path = state / f"exec-{run_id}"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        step, pid, at = line.split()
        out.append((step, int(pid), float(at)))
    return out


def superseded(events: Sequence[ow_es.Event]) -> set[int]:
    """Processes that lost a claim of this run while they still owned it (taken over after
    their lease ran out, or released): their in-flight steps could not be recorded, so
    running them again is expected."""
    lost: set[int] = set()
    owner: str | None = None
    for e in events:
        if e.type == "run_claimed":
            if owner is not None:
                lost.add(pid_of(owner))
            owner = e.data["worker_id"]
        elif e.type == "run_released" and owner is not None:
            lost.add(pid_of(owner))
            owner = None
        elif e.type in OWNERSHIP_ENDS:
            owner = None
    return lost


def audit_executions(
    events: Sequence[ow_es.Event],
    executions: Iterable[tuple[str, int, float]],
    interrupted: set[int],
) -> list[str]:
    """A step's code ran only in a process that claimed the run, at most once per claim of
    that process. Each execution is accounted for by a recorded failure or the recorded
    completion of the process that ran it, or else it ran in a process in ``interrupted``
    (killed, or whose claim was lost or released): its result could not be recorded."""
    problems: list[str] = []
    claims = Counter(pid_of(c.data["worker_id"]) for c in claims_of(events))
    recorded: dict[str, Counter[int]] = defaultdict(Counter)
    completed: set[str] = set()
    for e in events:
        if e.data.get("abandoned"):
            continue  # the next owner closes a lost worker's attempt: it ran nothing itself
        if e.type in ("step_completed", "step_failed") and e.data.get("kind") == "function":
            recorded[e.data["step_name"]][pid_of(e.data["worker_id"])] += 1
            if e.type == "step_completed":
                completed.add(e.data["step_name"])
    by_step: dict[str, list[int]] = defaultdict(list)
    for step, pid, _ in executions:
        by_step[step].append(pid)
    for step, pids in sorted(by_step.items()):
        ran = Counter(pids)
        strangers = set(ran) - set(claims)
        if strangers:
            problems.append(f"step {step!r} ran in {strangers}, which never claimed the run")
        twice = [p for p, n in ran.items() if p in claims and n > claims[p]]
        if twice:
            problems.append(f"step {step!r} ran more than once per claim in {twice}: {pids}")
        if step not in completed:
            problems.append(f"step {step!r} ran in {pids} but no completion is recorded")
        phantom = recorded[step] - ran
        if phantom:
            problems.append(f"step {step!r} recorded by {dict(phantom)}, which did not run it")
        unexplained = ran - recorded[step]
        again = set(unexplained) - interrupted
        if again:
            problems.append(
                f"step {step!r} ran again ({pids}; recorded {dict(recorded[step])}) although "
                f"process(es) {again} were never interrupted"
            )
    problems += [f"step {s!r} completed but never ran" for s in completed if s not in by_step]
    return problems


def takeovers(events: Sequence[ow_es.Event]) -> int:
    """Claims that took the run from a worker that still owned it (its lease ran out)."""
    count, owned = 0, False
    for e in events:
        if e.type == "run_claimed":
            count += owned
            owned = True
        elif e.type in OWNERSHIP_ENDS:
            owned = False
    return count


def describe(events: Sequence[ow_es.Event]) -> str:
    """A compact listing of a run's log, for failure messages."""
    lines = []
    for e in events:
        d = e.data
        step = f" {d['step_name']}#{d.get('attempt')}" if d.get("step_name") else ""
        who = f" by {d['worker_id']}" if d.get("worker_id") else ""
        lines.append(f"  {e.seq:>3} {e.created_at:%H:%M:%S.%f} {e.type}{step}{who}")
    return "\n".join(lines)


async def statuses(ow: ow_es.OpenWorkflow) -> Counter[str]:
    counts: Counter[str] = Counter()
    for (_, status), n in (await ow.store.count_runs()).items():
        counts[status] += n
    return counts


def claims_of(events: Sequence[ow_es.Event]) -> list[ow_es.Event]:
    return [e for e in events if e.type == "run_claimed"]
