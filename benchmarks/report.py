"""Result records, small statistics, and the printed table and JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TARGET_WORKFLOWS_PER_S = 1000.0
TARGET_LATENCY_P50_MS = 3.0
TARGET_LATENCY_P99_MS = 10.0
TARGET_MS_PER_STEP = 0.5
TARGET_REBUILD_EVENTS_PER_S = 50_000.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Throughput:
    """(a) a backlog of runs with four no-op steps, drained by one worker process."""

    runs: int
    steps_per_run: int
    worker_concurrency: int
    completed: int
    start_seconds: float
    starts_per_s: float
    seconds: float  # first claim -> last run finished, from the runs' own timestamps
    workflows_per_s: float
    steps_per_s: float
    wall_seconds_from_spawn: float  # process spawn (imports, connect) -> last run finished
    worker_cpu_ms_per_run: float | None  # worker process CPU (READY -> exit) per run
    postgres_cpu_ms_per_run: float | None  # CPU of the server backends serving the worker


@dataclass
class Latency:
    """(b) enqueue (just before start()) -> first step start, on an idle worker."""

    runs: int
    rate_per_s: float
    worker_concurrency: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    start_call_p50_ms: float  # start() itself: the insert and its commit
    to_claim_p50_ms: float  # enqueue -> the claim transaction (run.started_at)
    to_claim_p99_ms: float


@dataclass
class Sequential:
    """(c) one run of many sequential no-op steps."""

    steps: int
    worker_concurrency: int
    run_seconds: float  # run.started_at -> run.finished_at
    ms_per_step: float
    client_seconds: float  # before start() -> result() returned
    client_ms_per_step: float
    worker_cpu_ms_per_step: float | None
    postgres_cpu_ms_per_step: float | None


@dataclass
class Floor:
    """(d) the same database with bare psycopg: what no engine on top of it can beat."""

    jobs: int
    concurrency: int
    pool_size: int
    inserts_per_s: float  # single-row INSERT transactions, concurrent
    jobs_per_s: float  # claim (SKIP LOCKED + UPDATE) and complete (UPDATE) transactions
    sequential_job_p50_ms: float  # INSERT, claim, complete, one job at a time
    sequential_job_p99_ms: float
    insert_commit_p50_ms: float  # one single-row INSERT + commit
    insert_commit_p99_ms: float
    notify_p50_ms: float  # NOTIFY sent -> received by a LISTEN connection
    notify_p99_ms: float
    paced_rate_per_s: float  # the bare version of (b): enqueue+NOTIFY -> LISTEN -> claim
    paced_queue_p50_ms: float
    paced_queue_p99_ms: float


@dataclass
class Rebuild:
    """(e) ``reproject()`` folding the whole event log of the schema into fresh projections."""

    runs: int  # runs this phase wrote, each of steps_per_run steps
    steps_per_run: int
    events_built: int  # events this phase wrote (steps_per_run + 3 per run)
    build_seconds: float  # writing them through the store API
    build_events_per_s: float
    log_events: int  # the whole log (earlier phases included), counted before the rebuild
    events: int  # events folded by reproject() (report.events)
    seconds: float  # reproject(): rebuild, indexes, gate, catch-up, swap
    events_per_s: float
    gate_ms: float  # the exclusive append gate held (report.gate_seconds)
    gate_attempts: int
    verify_events: int  # reproject(verify=True): rebuild, then diff under the gate, discard
    verify_seconds: float
    verify_events_per_s: float
    verify_gate_ms: float
    verify_differences: int  # rows the verify found differing (expected 0)


@dataclass
class Report:
    server: dict[str, Any]
    throughput: Throughput | None = None
    latency: Latency | None = None
    sequential: Sequential | None = None
    floor: Floor | None = None
    rebuild: Rebuild | None = None
    errors: dict[str, str] = field(default_factory=dict)
    repeats: dict[str, list[float]] = field(default_factory=dict)  # headline of each repetition

    def ratios(self) -> dict[str, float | None]:
        a, b, c, d = self.throughput, self.latency, self.sequential, self.floor
        return {
            "workflows_per_s_vs_floor_jobs_per_s": _ratio(
                _v(a, "workflows_per_s"), _v(d, "jobs_per_s")
            ),
            "starts_per_s_vs_floor_inserts_per_s": _ratio(
                _v(a, "starts_per_s"), _v(d, "inserts_per_s")
            ),
            "latency_p50_vs_notify_p50": _ratio(_v(b, "p50_ms"), _v(d, "notify_p50_ms")),
            "latency_p99_vs_notify_p99": _ratio(_v(b, "p99_ms"), _v(d, "notify_p99_ms")),
            "latency_p50_vs_paced_queue_p50": _ratio(_v(b, "p50_ms"), _v(d, "paced_queue_p50_ms")),
            "latency_p99_vs_paced_queue_p99": _ratio(_v(b, "p99_ms"), _v(d, "paced_queue_p99_ms")),
            "ms_per_step_vs_insert_commit_p50": _ratio(
                _v(c, "ms_per_step"), _v(d, "insert_commit_p50_ms")
            ),
        }

    def targets(self) -> dict[str, dict[str, Any]]:
        a, b, c = self.throughput, self.latency, self.sequential
        return {
            "workflows_per_s": _target(_v(a, "workflows_per_s"), ">=", TARGET_WORKFLOWS_PER_S),
            "latency_p50_ms": _target(_v(b, "p50_ms"), "<=", TARGET_LATENCY_P50_MS),
            "latency_p99_ms": _target(_v(b, "p99_ms"), "<=", TARGET_LATENCY_P99_MS),
            "ms_per_step": _target(_v(c, "ms_per_step"), "<=", TARGET_MS_PER_STEP),
            "rebuild_events_per_s": _target(
                _v(self.rebuild, "events_per_s"), ">=", TARGET_REBUILD_EVENTS_PER_S
            ),
        }

    def to_json(self) -> dict[str, Any]:
        def record(value: Any) -> Any:
            return dataclasses.asdict(value) if value is not None else None

        return {
            "server": self.server,
            "throughput": record(self.throughput),
            "latency": record(self.latency),
            "sequential": record(self.sequential),
            "floor": record(self.floor),
            "rebuild": record(self.rebuild),
            "ratios": self.ratios(),
            "targets": self.targets(),
            "repeats": self.repeats,
            "errors": self.errors,
        }


def _v(record: object | None, name: str) -> float | None:
    """A figure of a record that may be missing (its phase not run or failed)."""
    return None if record is None else float(getattr(record, name))


def _ratio(value: float | None, floor: float | None) -> float | None:
    if not value or not floor or math.isnan(value) or math.isnan(floor):
        return None
    return value / floor


def _target(value: float | None, op: str, goal: float) -> dict[str, Any]:
    met = None
    if value is not None and not math.isnan(value):
        met = value >= goal if op == ">=" else value <= goal
    return {"value": value, "target": f"{op} {goal:g}", "met": met}


# -- the table ------------------------------------------------------------------------------

HEADER = ("measurement", "ow-es", "floor (bare psycopg)", "ratio", "target", "met")


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _met(target: dict[str, Any]) -> str:
    return {True: "yes", False: "NO", None: "-"}[target["met"]]


def _pair(first: float | None, second: float | None, digits: int = 2) -> str:
    return f"{_num(first, digits)} / {_num(second, digits)}"


def _cell(floor: Floor | None, *names: str, unit: str = "", digits: int = 3) -> str:
    """A floor cell ("x" or "x / y", then the unit); blank when the floor was not measured."""
    if floor is None:
        return ""
    text = " / ".join(_num(getattr(floor, name), digits) for name in names)
    return f"{text} {unit}".rstrip()


Row = tuple[str, str, str, str, str, str]


def _info(label: str, value: str) -> Row:
    return (label, value, "", "", "", "")


def _floor_row(label: str, value: str) -> Row:
    return (label, "", value, "", "", "")


def _throughput_rows(a: Throughput, d: Floor | None, r: dict[str, float | None]) -> list[Row]:
    target = _target(a.workflows_per_s, ">=", TARGET_WORKFLOWS_PER_S)
    return [
        (
            "(a) workflows/s (4 no-op steps)",
            _num(a.workflows_per_s, 1),
            _cell(d, "jobs_per_s", unit="jobs/s", digits=1),
            _times(r["workflows_per_s_vs_floor_jobs_per_s"]),
            target["target"],
            _met(target),
        ),
        _info("(a) steps/s", _num(a.steps_per_s, 1)),
        _info("(a) drain time, first claim->last end s", _num(a.seconds, 3)),
        _info("(a) wall from worker spawn s", _num(a.wall_seconds_from_spawn, 3)),
        _info(
            "(a) CPU ms per run: worker / postgres",
            _pair(a.worker_cpu_ms_per_run, a.postgres_cpu_ms_per_run, 3),
        ),
        (
            "(a) start() rate, runs/s",
            _num(a.starts_per_s, 1),
            _cell(d, "inserts_per_s", unit="inserts/s", digits=1),
            _times(r["starts_per_s_vs_floor_inserts_per_s"]),
            "",
            "",
        ),
    ]


def _latency_rows(b: Latency, d: Floor | None, r: dict[str, float | None]) -> list[Row]:
    p50 = _target(b.p50_ms, "<=", TARGET_LATENCY_P50_MS)
    p99 = _target(b.p99_ms, "<=", TARGET_LATENCY_P99_MS)
    paced = ""
    if d is not None:
        paced = (
            f"{_times(r['latency_p50_vs_paced_queue_p50'])} / "
            f"{_times(r['latency_p99_vs_paced_queue_p99'])}"
        )
    return [
        (
            "(b) enqueue->first step p50 ms",
            _num(b.p50_ms),
            _cell(d, "notify_p50_ms", unit="ms NOTIFY"),
            _times(r["latency_p50_vs_notify_p50"]),
            p50["target"],
            _met(p50),
        ),
        (
            "(b) enqueue->first step p99 ms",
            _num(b.p99_ms),
            _cell(d, "notify_p99_ms", unit="ms NOTIFY"),
            _times(r["latency_p99_vs_notify_p99"]),
            p99["target"],
            _met(p99),
        ),
        (
            "(b) p50 / p99 vs bare queue at the same pace",
            _pair(b.p50_ms, b.p99_ms),
            _cell(d, "paced_queue_p50_ms", "paced_queue_p99_ms", unit="ms"),
            paced,
            "",
            "",
        ),
        _info("(b) max ms", _num(b.max_ms)),
        _info("(b) start() call p50 ms", _num(b.start_call_p50_ms)),
        _info("(b) enqueue->claim p50 / p99 ms", _pair(b.to_claim_p50_ms, b.to_claim_p99_ms)),
    ]


def _sequential_rows(c: Sequential, d: Floor | None, r: dict[str, float | None]) -> list[Row]:
    target = _target(c.ms_per_step, "<=", TARGET_MS_PER_STEP)
    return [
        (
            f"(c) ms per step ({c.steps} sequential)",
            _num(c.ms_per_step, 3),
            _cell(d, "insert_commit_p50_ms", unit="ms insert+commit"),
            _times(r["ms_per_step_vs_insert_commit_p50"]),
            target["target"],
            _met(target),
        ),
        _info("(c) client-side ms per step", _num(c.client_ms_per_step, 3)),
        _info(
            "(c) CPU ms per step: worker / postgres",
            _pair(c.worker_cpu_ms_per_step, c.postgres_cpu_ms_per_step, 3),
        ),
    ]


def _floor_rows(d: Floor) -> list[Row]:
    return [
        _floor_row(
            f"(d) floor jobs/s (claim+complete, {d.concurrency} tasks/{d.pool_size} conns)",
            _cell(d, "jobs_per_s", digits=1),
        ),
        _floor_row("(d) floor inserts/s (concurrent)", _cell(d, "inserts_per_s", digits=1)),
        _floor_row(
            "(d) floor sequential job p50 / p99 ms",
            _cell(d, "sequential_job_p50_ms", "sequential_job_p99_ms"),
        ),
        _floor_row(
            "(d) floor insert+commit p50 / p99 ms",
            _cell(d, "insert_commit_p50_ms", "insert_commit_p99_ms"),
        ),
        _floor_row(
            "(d) floor LISTEN/NOTIFY round trip p50 / p99 ms",
            _cell(d, "notify_p50_ms", "notify_p99_ms"),
        ),
        _floor_row(
            f"(d) floor enqueue->claimed at {d.paced_rate_per_s:g}/s p50 / p99 ms",
            _cell(d, "paced_queue_p50_ms", "paced_queue_p99_ms"),
        ),
    ]


def _rate(per_s: float, count: int, seconds: float) -> str:
    return f"{_num(per_s, 0)} ({count:,} in {_num(seconds, 3)} s)"


def _rebuild_rows(e: Rebuild) -> list[Row]:
    target = _target(e.events_per_s, ">=", TARGET_REBUILD_EVENTS_PER_S)
    return [
        (
            "(e) reproject() events/s",
            _num(e.events_per_s, 0),
            "",
            "",
            target["target"],
            _met(target),
        ),
        _info("(e) events folded / seconds", f"{e.events:,} / {_num(e.seconds, 3)}"),
        _info("(e) events in the log (all phases)", f"{e.log_events:,}"),
        _info("(e) append gate held ms (attempts)", f"{_num(e.gate_ms)} ({e.gate_attempts})"),
        _info(
            "(e) reproject(verify=True) events/s",
            _rate(e.verify_events_per_s, e.verify_events, e.verify_seconds),
        ),
        _info(
            "(e) verify: gate held ms / rows differing",
            f"{_num(e.verify_gate_ms)} / {e.verify_differences}",
        ),
        _info(
            f"(e) log built: {e.runs:,} runs x {e.steps_per_run} steps, events/s",
            _rate(e.build_events_per_s, e.events_built, e.build_seconds),
        ),
    ]


def _rows(report: Report) -> list[Row]:
    d, ratios = report.floor, report.ratios()
    rows: list[Row] = []
    if report.throughput is not None:
        rows += _throughput_rows(report.throughput, d, ratios)
    if report.latency is not None:
        rows += _latency_rows(report.latency, d, ratios)
    if report.sequential is not None:
        rows += _sequential_rows(report.sequential, d, ratios)
    if d is not None:
        rows += _floor_rows(d)
    if report.rebuild is not None:
        rows += _rebuild_rows(report.rebuild)
    return rows


def table(report: Report) -> str:
    rows = [HEADER, *_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    for phase, values in report.repeats.items():
        if len(values) > 1:
            shown = ", ".join(_num(value) for value in values)
            lines.append(f"({phase}) median of {len(values)} repetitions: {shown}")
    for phase, error in report.errors.items():
        lines.append(f"!! {phase}: {error}")
    return "\n".join(lines)


def server_line(server: dict[str, Any]) -> str:
    return "  ".join(f"{key}={value}" for key, value in server.items())


def dumps(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, default=str)
