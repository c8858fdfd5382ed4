"""The printed tables: every figure of the run (``details``) and the judged summary
(``summary``: ow-es, what it is compared with, the ratio, the target, met), as text or as
markdown for the README."""

from __future__ import annotations

import math
from collections.abc import Sequence

from records import (
    Dbos,
    Floor,
    InProcess,
    Latency,
    LongHistory,
    ManyWorkers,
    PgQueuer,
    Rebuild,
    Scale,
    Sequential,
    Throughput,
)
from report import Judged, Report, ratio

Row = tuple[str, str, str, str]  # measurement, ow-es, compared with (same run), ratio
HEADER: Row = ("measurement", "figure", "compared with (same run)", "ratio")


def num(value: float | None, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def pair(first: float | None, second: float | None, digits: int = 2) -> str:
    return f"{num(first, digits)} / {num(second, digits)}"


def _info(label: str, value: str) -> Row:
    return (label, value, "", "")


def _vs(label: str, value: float | None, ref: float | None, ref_text: str, digits: int = 2) -> Row:
    compared = "" if ref is None else f"{num(ref, digits)} {ref_text}".rstrip()
    return (label, num(value, digits), compared, times(ratio(value, ref)))


def _peer(
    label: str, value: float | None, peer: object | None, name: str, text: str, digits: int = 2
) -> list[Row]:
    """A comparison with a peer's figure: no row when the peer was not measured."""
    reference = _f(peer, name)
    return [] if reference is None else [_vs(label, value, reference, text, digits)]


# -- the phases ----------------------------------------------------------------------------------


def _throughput(a: Throughput, d: Floor | None, x: Dbos | None) -> list[Row]:
    return [
        _vs(
            "(a) workflows/s (4 no-op steps)",
            a.workflows_per_s,
            _f(d, "jobs_per_s"),
            "jobs/s bare claim+complete",
            1,
        ),
        *_peer("(a) workflows/s vs DBOS", a.workflows_per_s, x, "workflows_per_s", "DBOS", 1),
        _info("(a) steps/s", num(a.steps_per_s, 1)),
        _info("(a) drain time, first claim->last end s", num(a.seconds, 3)),
        _info("(a) wall from worker spawn s", num(a.wall_seconds_from_spawn, 3)),
        _info(
            "(a) CPU ms per run: worker / postgres",
            pair(a.worker_cpu_ms_per_run, a.postgres_cpu_ms_per_run, 3),
        ),
        _info(
            "(a) claims / empty claims per run", pair(a.claims_per_run, a.empty_claims_per_run, 3)
        ),
        _vs("(a) start() rate, runs/s", a.starts_per_s, _f(d, "inserts_per_s"), "inserts/s", 1),
    ]


def _latency(b: Latency, d: Floor | None, q: PgQueuer | None) -> list[Row]:
    return [
        _vs(
            "(b) enqueue->first step p50 ms",
            b.p50_ms,
            _f(d, "paced_queue_p50_ms"),
            "ms bare LISTEN queue",
        ),
        _vs(
            "(b) enqueue->first step p99 ms",
            b.p99_ms,
            _f(d, "paced_queue_p99_ms"),
            "ms bare LISTEN queue",
        ),
        *_peer("(b) p50 vs pgqueuer ms", b.p50_ms, q, "p50_ms", "ms pgqueuer"),
        *_peer("(b) p99 vs pgqueuer ms", b.p99_ms, q, "p99_ms", "ms pgqueuer"),
        _vs(
            "(b) p50 vs one NOTIFY round trip ms", b.p50_ms, _f(d, "notify_p50_ms"), "ms NOTIFY", 3
        ),
        _info("(b) max ms", num(b.max_ms)),
        _info("(b) p50 split: 1. start() call (insert, NOTIFY, commit)", num(b.start_call_p50_ms)),
        _info("(b)   2. start() returned -> worker calls claim (wake)", num(b.wake_p50_ms)),
        _info("(b)   3. the claim call (round trips, fold, commit)", num(b.claim_p50_ms)),
        _info("(b)   4. claim returned -> first step runs", num(b.claim_to_step_p50_ms)),
        _info("(b)   sum of the parts' p50s (total p50 above)", num(b.parts_p50_sum_ms)),
        _info("(b) database: enqueue->start() statement p50 ms", num(b.to_created_p50_ms)),
        _info(
            "(b) database: enqueue->claim began p50 / p99 ms",
            pair(b.to_claim_p50_ms, b.to_claim_p99_ms),
        ),
    ]


def _sequential(c: Sequential, d: Floor | None) -> list[Row]:
    return [
        _vs(
            f"(c) ms per step ({c.steps} sequential)",
            c.ms_per_step,
            _f(d, "insert_commit_p50_ms"),
            "ms insert+commit",
            3,
        ),
        _info("(c) client-side ms per step", num(c.client_ms_per_step, 3)),
        _info(
            "(c) CPU ms per step: worker / postgres",
            pair(c.worker_cpu_ms_per_step, c.postgres_cpu_ms_per_step, 3),
        ),
    ]


def _floor(d: Floor) -> list[Row]:
    def floor_row(label: str, value: str) -> Row:
        return (label, "", value, "")

    return [
        floor_row(
            f"(d) floor jobs/s (claim+complete, {d.concurrency} tasks/{d.pool_size} conns)",
            num(d.jobs_per_s, 1),
        ),
        floor_row("(d) floor inserts/s (concurrent)", num(d.inserts_per_s, 1)),
        floor_row(
            "(d) floor sequential job p50 / p99 ms",
            pair(d.sequential_job_p50_ms, d.sequential_job_p99_ms, 3),
        ),
        floor_row(
            "(d) floor insert+commit p50 / p99 ms",
            pair(d.insert_commit_p50_ms, d.insert_commit_p99_ms, 3),
        ),
        floor_row(
            "(d) floor LISTEN/NOTIFY round trip p50 / p99 ms",
            pair(d.notify_p50_ms, d.notify_p99_ms, 3),
        ),
        floor_row(
            f"(d) floor enqueue->claimed at {d.paced_rate_per_s:g}/s p50 / p99 ms",
            pair(d.paced_queue_p50_ms, d.paced_queue_p99_ms, 3),
        ),
    ]


def _rebuild(e: Rebuild) -> list[Row]:
    def rate(per_s: float, count: int, seconds: float) -> str:
        return f"{num(per_s, 0)} ({count:,} in {num(seconds, 3)} s)"

    return [
        _info("(e) reproject() events/s", num(e.events_per_s, 0)),
        _info("(e) events folded / seconds", f"{e.events:,} / {num(e.seconds, 3)}"),
        _info("(e) events in the log (all phases)", f"{e.log_events:,}"),
        _info("(e) append gate held ms (attempts)", f"{num(e.gate_ms)} ({e.gate_attempts})"),
        _info(
            "(e) reproject(verify=True) events/s",
            rate(e.verify_events_per_s, e.verify_events, e.verify_seconds),
        ),
        _info(
            "(e) verify: gate held ms / rows differing",
            f"{num(e.verify_gate_ms)} / {e.verify_differences}",
        ),
        _info(
            f"(e) log built: {e.runs:,} runs x {e.steps_per_run} steps, events/s",
            rate(e.build_events_per_s, e.events_built, e.build_seconds),
        ),
    ]


def _scale(f: Scale) -> list[Row]:
    rows = [
        _info(
            "(f) seeded: terminal / parked runs, events",
            f"{f.seed_terminal:,} / {f.seed_parked:,}, {f.seed_events:,}",
        ),
        _info(
            "(f) seeding s (seed.sql + VACUUM ANALYZE + CHECKPOINT)",
            num(f.seed_seconds, 1) + ("" if f.checkpointed else " (CHECKPOINT not allowed)"),
        ),
    ]
    empty = f.empty
    for point in f.points:
        at = f"(f) {point.events:,} events, {point.workflow_runs:,} runs:"
        rows += [
            _vs(f"{at} workflows/s", point.workflows_per_s, empty.workflows_per_s, "empty", 1),
            _vs(f"{at} (b) p50 ms", point.p50_ms, empty.p50_ms, "ms empty"),
            _vs(f"{at} (b) p99 ms", point.p99_ms, empty.p99_ms, "ms empty"),
            _vs(f"{at} claim call p50 ms", point.claim_p50_ms, empty.claim_p50_ms, "ms empty"),
            _vs(f"{at} (c) ms per step", point.ms_per_step, empty.ms_per_step, "ms empty", 3),
            _info(
                f"{at} (c) each run's ms per step",
                " / ".join(num(ms, 3) for ms in point.ms_per_step_runs),
            ),
            _vs(
                f"{at} bare insert+commit p50 ms",
                point.insert_commit_ms,
                empty.insert_commit_ms,
                "ms empty",
                3,
            ),
        ]
    return rows


def _long(g: LongHistory) -> list[Row]:
    rows = [
        _info("(g) workflow", f"{g.steps} steps, sleeps {g.sleep_ms:g} ms every {g.sleep_every}"),
        _info(
            "(g) replay cache in this ow_es", "yes" if g.cache_supported else "no (measured as is)"
        ),
    ]
    for v in g.variants:
        rows += [
            _vs(
                f"(g) {v.label}: wake-up ms, last 5 vs first 5", v.last_ms, v.first_ms, "ms first 5"
            ),
            _info(
                f"(g) {v.label}: slope ms per 100 steps of history",
                num(v.slope_ms_per_100_steps, 3),
            ),
            _info(
                f"(g) {v.label}: wake-ups / run seconds",
                f"{len(v.wakes)} / {num(v.run_seconds, 2)}",
            ),
            _info(
                f"(g) {v.label}: timer lag p50 ms (due -> claimed)",
                num(_median([w.timer_lag_ms for w in v.wakes])),
            ),
        ]
        for wake in _landmarks(v):
            rows.append(
                _info(f"(g) {v.label}: wake-up at step {wake.steps_before} ms", num(wake.wake_ms))
            )
    return rows


def _landmarks(variant: object) -> list[object]:
    """Wake-ups at about 10, 100, 250, 500, 750 and 1000 steps."""
    wakes = getattr(variant, "wakes", [])
    if not wakes:
        return []
    wanted = [10, 100, 250, 500, 750, max(w.steps_before for w in wakes)]
    chosen = []
    for step in wanted:
        wake = min(wakes, key=lambda w: abs(w.steps_before - step))
        if wake not in chosen:
            chosen.append(wake)
    return chosen


def _median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def _many(h: ManyWorkers) -> list[Row]:
    one = h.at(1)
    rows = [
        _info("(h) backlog / concurrency per worker", f"{h.runs:,} runs / {h.concurrency}"),
        _info("(h) trickle: runs started one at a time", f"{h.trickle_runs} at {h.rate:g}/s"),
    ]
    for c in h.counts:
        rows += [
            _vs(
                f"(h) {c.workers} worker(s): workflows/s",
                c.workflows_per_s,
                one.workflows_per_s if one else None,
                "1 worker",
                1,
            ),
            _info(
                f"(h) {c.workers} worker(s): claims / empty claims per run started",
                pair(c.claims_per_run, c.empty_per_run, 3),
            ),
            _info(
                f"(h) {c.workers} worker(s), {h.rate:g} starts/s: claims / empty per run",
                pair(
                    None if c.trickle_claims is None else c.trickle_claims / h.trickle_runs,
                    c.trickle_empty_per_run(h.trickle_runs),
                    3,
                ),
            ),
            _info(
                f"(h) {c.workers} worker(s): worker CPU ms per run", num(c.worker_cpu_ms_per_run, 3)
            ),
        ]
    return rows


def _inproc(i: InProcess) -> list[Row]:
    return [
        _info(
            f"(i) in-process start->first step p50 / p99 ms ({i.runs} at {i.rate_per_s:g}/s)",
            pair(i.p50_ms, i.p99_ms),
        ),
        _info("(i) max ms", num(i.max_ms)),
    ]


def _pgqueuer(q: PgQueuer) -> list[Row]:
    return [
        _info(
            f"pgqueuer {q.version} ({q.driver}): enqueue->job starts p50 / p99 ms",
            pair(q.p50_ms, q.p99_ms),
        ),
        _info(
            f"pgqueuer: jobs/s (no-op jobs, batch {q.batch_size}, first picked->last done)",
            f"{num(q.jobs_per_s, 1)} ({q.jobs:,} in {num(q.seconds, 3)} s)",
        ),
    ]


def _dbos(x: Dbos) -> list[Row]:
    return [
        _info(
            f"DBOS {x.version}: {x.steps_per_workflow}-step workflows/s ({x.threads} threads)",
            f"{num(x.workflows_per_s, 1)} ({x.workflows:,} in {num(x.seconds, 2)} s)",
        ),
    ]


def _f(record: object | None, name: str) -> float | None:
    if record is None:
        return None
    value = getattr(record, name)
    return None if value is None else float(value)


def rows(report: Report) -> list[Row]:
    r, d = report, report.floor
    out: list[Row] = []
    if r.throughput is not None:
        out += _throughput(r.throughput, d, r.dbos)
    if r.latency is not None:
        out += _latency(r.latency, d, r.pgqueuer)
    if r.sequential is not None:
        out += _sequential(r.sequential, d)
    if d is not None:
        out += _floor(d)
    if r.pgqueuer is not None:
        out += _pgqueuer(r.pgqueuer)
    if r.dbos is not None:
        out += _dbos(r.dbos)
    if r.rebuild is not None:
        out += _rebuild(r.rebuild)
    if r.long is not None:
        out += _long(r.long)
    if r.many is not None:
        out += _many(r.many)
    if r.inproc is not None:
        out += _inproc(r.inproc)
    if r.scale is not None:
        out += _scale(r.scale)
    return out


def _render(lines: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = []
    for number, line in enumerate(lines):
        cells = [
            cell.ljust(width) if i < right_from else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        text.append("  ".join(cells).rstrip())
        if number == 0:
            text.append("  ".join("-" * width for width in widths))
    return text


def details(report: Report) -> str:
    """Every figure of the run, then the repetitions and the errors."""
    lines = _render([HEADER, *rows(report)])
    for phase, values in report.repeats.items():
        if len(values) > 1:
            lines.append(
                f"({phase}) median of {len(values)} repetitions: "
                + ", ".join(num(value) for value in values)
            )
    for phase, error in report.errors.items():
        lines.append(f"!! {phase}: {error}")
    return "\n".join(lines)


SUMMARY_HEADER = ("measurement", "ow-es", "floor or peer (same run)", "ratio", "target", "met")


def _digits(value: float) -> int:
    return 0 if abs(value) >= 1000 else 1 if abs(value) >= 100 else 2


def _summary_cells(line: Judged) -> tuple[str, str, str, str, str, str]:
    value = "-"
    if line.value is not None:
        value = f"{num(line.value, _digits(line.value))} {line.unit}".rstrip()
    reference = ""
    if line.reference is not None:
        reference = f"{num(line.reference, _digits(line.reference))} {line.reference_label}"
    met = {True: "yes", False: "NO", None: "-"}[line.met]
    return (line.measurement, value, reference, times(line.ratio), line.target, met)


def summary(report: Report) -> str:
    return "\n".join(_render([SUMMARY_HEADER, *map(_summary_cells, report.judged())]))


def summary_markdown(report: Report) -> str:
    """The summary as a markdown table, to paste into the README."""
    lines = ["| " + " | ".join(SUMMARY_HEADER) + " |", "|" + " --- |" * len(SUMMARY_HEADER)]
    for cells in map(_summary_cells, report.judged()):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
