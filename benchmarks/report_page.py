"""``--report docs/performance.md``: the run as a markdown page, with its plots beside it (in a
folder named after the page, e.g. ``docs/performance/*.png``)."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import plots
import table
from report import Report, dumps, dumps_all

COMMAND = "python benchmarks/bench.py"


def _where_the_time_goes(result: Report) -> list[str]:
    """A paragraph made of this run's own figures: where start-to-first-step and a step go."""
    lines: list[str] = []
    b, c, d = result.latency, result.sequential, result.floor
    if b is not None and b.claim_p50_ms is not None:
        lines.append(
            f"Start-to-first-step p50 was {b.p50_ms:.2f} ms. Its parts' p50s: the `start()` call "
            f"(the insert, its NOTIFY and the commit, as the client sees it) "
            f"{table.num(b.start_call_p50_ms)} ms; from `start()` returning to the worker "
            f"calling its claim (NOTIFY delivery and the worker's wake-up) "
            f"{table.num(b.wake_p50_ms)} ms; the claim call itself {table.num(b.claim_p50_ms)} "
            f"ms; from the claim returning to the first step running (history read, replay, "
            f"dispatch) {table.num(b.claim_to_step_p50_ms)} ms."
            + (
                f" The bare LISTEN queue at the same pace took {d.paced_queue_p50_ms:.2f} ms and "
                f"one NOTIFY round trip {d.notify_p50_ms:.3f} ms."
                if d is not None
                else ""
            )
            + (
                f" pgqueuer took {result.pgqueuer.p50_ms:.2f} ms (enqueue to its job starting)."
                if result.pgqueuer is not None
                else ""
            )
        )
    if c is not None:
        cpu = ""
        if c.worker_cpu_ms_per_step is not None:
            cpu = (
                f" (worker CPU {c.worker_cpu_ms_per_step:.3f} ms, PostgreSQL backends "
                f"{table.num(c.postgres_cpu_ms_per_step, 3)} ms)"
            )
        floor = f"; one bare insert+commit took {d.insert_commit_p50_ms:.3f} ms" if d else ""
        lines.append(f"A sequential step took {c.ms_per_step:.3f} ms{cpu}{floor}.")
    if result.scale is not None and len(result.scale.points) > 1:
        f = result.scale
        floor_drift = ""
        if f.full.insert_commit_ms and f.empty.insert_commit_ms:
            floor_drift = (
                f"; the bare insert+commit measured beside (c) ran at "
                f"{f.full.insert_commit_ms / f.empty.insert_commit_ms:.2f}x of its first figure"
            )
        lines.append(
            f"With {f.full.events:,} events in the log, (a) ran at {f.workflows_ratio:.2f}x, "
            f"(b)'s p50 at {f.p50_ratio:.2f}x and (c) at {f.ms_per_step_ratio:.2f}x of their "
            "empty-database figures (the same namespace, measured minutes apart: this "
            f"machine's run-to-run noise is of the same order{floor_drift})."
        )
    h = result.many
    eight, one = (h.at(8), h.at(1)) if h is not None else (None, None)
    if h is not None and eight is not None:
        alone = ""
        if one is not None:
            alone = (
                f"; one worker alone made {table.num(one.trickle_empty_per_run(h.trickle_runs))}"
            )
        lines.append(
            f"(h) With 8 worker processes, "
            f"{table.num(eight.trickle_empty_per_run(h.trickle_runs))} claims per run started "
            f"found nothing when runs came one at a time ({h.rate:g}/s){alone}; on a backlog, "
            f"{table.num(eight.empty_per_run)}."
        )
    if result.long is not None and result.long.variants:
        for v in result.long.variants:
            lines.append(
                f"(g) {v.label}: a wake-up cost {v.first_ms:.2f} ms at the start of the run and "
                f"{v.last_ms:.2f} ms after {result.long.steps} steps "
                f"({v.slope_ms_per_100_steps:+.3f} ms per 100 steps of history)."
            )
    return lines


def _section(result: Report, folder: Path, prefix: str, page: Path) -> list[str]:
    out = [f"## {result.backend}", "", f"`{table_server(result)}`", ""]
    out += ["### Summary (the README's table)", "", table.summary_markdown(result), ""]
    out += ["### Where the time goes", "", *(f"{line}\n" for line in _where_the_time_goes(result))]
    reason = plots.available()
    if reason is None:
        images = plots.draw(result, folder, prefix)
        if images:
            out += ["### Plots", ""]
            for image in images:
                rel = os.path.relpath(image, page.parent)
                out += [f"![{image.stem}]({rel})", ""]
    else:
        out += [f"_{reason}_", ""]
    out += ["### Full output", "", "```text", table.details(result), "```", ""]
    return out


def table_server(result: Report) -> str:
    return "  ".join(f"{key}={value}" for key, value in result.server.items())


def write(page: Path, results: list[Report], argv: list[str]) -> list[Path]:
    """Write the page (and its plots); returns what was written."""
    folder = page.parent / page.stem
    out = [
        "# ow-es performance",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} by",
        "",
        "```sh",
        f"{COMMAND} {shlex.join(argv)}",
        "```",
        "",
        "Every ow-es figure is measured beside its floor (bare psycopg on the same database) and "
        "its peers (pgqueuer, DBOS) in the same run; `benchmarks/README.md` says what each phase "
        "does and what each part of the latency split measures.",
        "",
    ]
    for number, result in enumerate(results):
        prefix = "" if number == 0 else f"{result.backend}-"
        out += _section(result, folder, prefix, page)
    document = dumps(results[0]) if len(results) == 1 else dumps_all(results)
    out += [
        "## JSON",
        "",
        "<details><summary>all figures</summary>",
        "",
        "```json",
        document,
        "```",
        "",
        "</details>",
        "",
    ]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(out))
    return [page, *sorted(folder.glob("*.png"))] if folder.exists() else [page]
