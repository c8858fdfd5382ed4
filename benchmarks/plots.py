"""The report's PNG plots (matplotlib, from the ``bench`` extra): the growth curves of (f) and
(g), the scaling of (h), and the parts of (b)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from records import Latency, LongHistory, ManyWorkers, Scale
from report import TARGET_EMPTY_CLAIMS, TARGET_SCALE, Report


def available() -> str | None:
    """None when matplotlib can be used, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plots"
    return None


def _figure() -> tuple[object, object]:
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7.5, 4.2), dpi=110)


def _save(figure: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def scale(f: Scale, path: Path) -> Path:
    figure, ax = _figure()
    xs = [p.events / 1e6 for p in f.points]
    empty = f.empty
    ax.plot(
        xs,
        [p.workflows_per_s / empty.workflows_per_s for p in f.points],
        "o-",
        label="(a) workflows/s",
    )
    ax.plot(xs, [p.p50_ms / empty.p50_ms for p in f.points], "s-", label="(b) p50 latency")
    ax.plot(
        xs, [p.ms_per_step / empty.ms_per_step for p in f.points], "^-", label="(c) ms per step"
    )
    for bound in (1 - TARGET_SCALE, 1 + TARGET_SCALE):
        ax.axhline(bound, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("events in the log (millions)")
    ax.set_ylabel("relative to the empty database")
    ax.set_title("(f) scale: figures as the history grows (target: within 10 %)")
    ax.legend()
    return _save(figure, path)


def _rolling_median(values: list[float], width: int = 5) -> list[float]:
    half = width // 2
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def long_history(g: LongHistory, path: Path) -> Path:
    figure, ax = _figure()
    for variant in g.variants:
        xs = [w.steps_before for w in variant.wakes]
        ys = [w.wake_ms for w in variant.wakes]
        (line,) = ax.plot(xs, _rolling_median(ys), label=f"{variant.label} (rolling median)")
        ax.scatter(xs, ys, s=6, alpha=0.35, color=line.get_color())
    ax.set_xlabel("steps in the run's history")
    ax.set_ylabel("wake-up ms (claim -> next step's record)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"(g) a {g.steps}-step run sleeping every {g.sleep_every} steps")
    ax.legend()
    return _save(figure, path)


def many_workers(h: ManyWorkers, path: Path) -> Path:
    figure, ax = _figure()
    workers = [c.workers for c in h.counts]
    lines = ax.plot(
        workers,
        [c.workflows_per_s for c in h.counts],
        "o-",
        color="tab:blue",
        label="workflows/s, backlog",
    )
    ax.set_xlabel("worker processes")
    ax.set_ylabel("workflows/s", color="tab:blue")
    ax.set_xticks(workers)
    ax.set_ylim(bottom=0)
    empty = ax.twinx()
    lines += empty.plot(
        workers,
        [c.empty_per_run or 0.0 for c in h.counts],
        "s--",
        color="tab:red",
        label="empty claims per run, backlog",
    )
    lines += empty.plot(
        workers,
        [c.trickle_empty_per_run(h.trickle_runs) or 0.0 for c in h.counts],
        "^:",
        color="tab:orange",
        label=f"empty claims per run, {h.rate:g} starts/s",
    )
    empty.axhline(TARGET_EMPTY_CLAIMS, color="tab:red", linestyle=":", linewidth=0.8)
    empty.set_ylabel("empty claims per run started", color="tab:red")
    empty.set_ylim(bottom=0)
    ax.legend(
        lines,
        [line.get_label() for line in lines],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=3,
        fontsize="small",
    )
    ax.set_title(f"(h) {h.runs:,} runs, {h.concurrency} slots per worker")
    return _save(figure, path)


def latency_parts(b: Latency, path: Path) -> Path:
    figure, ax = _figure()
    parts = [
        ("start() call", b.start_call_p50_ms),
        ("wake (NOTIFY, worker loop)", b.wake_p50_ms),
        ("claim call", b.claim_p50_ms),
        ("claim -> first step", b.claim_to_step_p50_ms),
    ]
    left = 0.0
    for label, value in parts:
        width = max(value or 0.0, 0.0)
        ax.barh(["p50 parts"], [width], left=left, label=f"{label}: {value or 0:.2f} ms")
        left += width
    ax.barh(["total p50"], [b.p50_ms], color="grey", label=f"total p50: {b.p50_ms:.2f} ms")
    ax.set_xlabel("ms")
    ax.set_title("(b) start -> first step, p50 of each part")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize="small")
    return _save(figure, path)


def draw(result: Report, folder: Path, prefix: str) -> list[Path]:
    """Every plot this result has data for, into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[object | None, str, Callable[[object, Path], Path]]] = [
        (result.scale if result.scale and len(result.scale.points) > 1 else None, "scale", scale),
        (
            result.long if result.long and result.long.variants else None,
            "long_history",
            long_history,
        ),
        (result.many if result.many and result.many.counts else None, "many_workers", many_workers),
        (result.latency, "latency_parts", latency_parts),
    ]
    return [plot(data, folder / f"{prefix}{name}.png") for data, name, plot in jobs if data]
