"""(g) long histories: the cost of a wake-up as a run's history grows.

One run of a 1,000-step workflow that sleeps every 10 steps is served by a worker process; each
of its 100 wake-ups is measured from its history:
from the ``run_claimed`` event (the claim transaction's time) to the next event, the sleep
step's record (the time of the append that follows the history read and the replay). Both are
database times. When the installed ow_es's worker takes ``replay_cache_bytes`` (a worker-local
cache of the replay state of runs it parked), the run is measured with the cache off and on.

The sleep lasts 20 ms: a sleep already due when its start is recorded completes at once without
parking, so one of 0 or 1 ms would measure (almost) no wake-up; only sleeps that parked count.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import datetime

import bench_workflows
from records import LongHistory, LongVariant, Wake
from target import Target, client
from worker_app import supports_holding, supports_replay_cache
from workers import worker_process

import ow_es

CACHE_BYTES = 64 * 1024 * 1024  # "on": more than one run's history needs
HELD_RUNS = 100  # "held": the worker keeps up to this many sleeping runs' functions suspended


def wakes(history: Sequence[ow_es.Event]) -> list[Wake]:
    """Every claim after the first: the cost to the next event, and how late the timer was."""
    found: list[Wake] = []
    steps = 0
    due: datetime | None = None
    for index, event in enumerate(history):
        if event.type == "step_completed" and event.data.get("kind") == "function":
            steps += 1
        elif event.type == "run_sleeping":
            due = datetime.fromisoformat(event.data["until"])
        elif event.type == "run_claimed" and index > 1 and index + 1 < len(history):
            after = history[index + 1]
            lag = (event.created_at - due).total_seconds() * 1000 if due else float("nan")
            found.append(
                Wake(
                    steps_before=steps,
                    events_before=index,
                    wake_ms=(after.created_at - event.created_at).total_seconds() * 1000,
                    timer_lag_ms=lag,
                )
            )
    return found


def _slope(points: Sequence[Wake]) -> float:
    """Least-squares ms per 100 steps of history."""
    if len(points) < 2:
        return float("nan")
    xs = [w.steps_before for w in points]
    ys = [w.wake_ms for w in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if not spread:
        return float("nan")
    return 100 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


async def _variant(
    target: Target,
    namespace: str,
    label: str,
    cache: int | None,
    spec: dict[str, float],
    held: int | None = None,
) -> LongVariant:
    options = [] if cache is None else ["--replay-cache-bytes", str(cache)]
    if held is not None:
        options += ["--hold-parked-runs", str(held)]
    async with client(target, namespace) as ow:
        async with worker_process(target, namespace, 10, options) as worker:
            await worker.wait_ready()
            handle = await ow.start(bench_workflows.long_history, spec)
            await handle.result(timeout=600)
        run = await handle.status()
        history = await ow.history(handle.run_id)
    found = wakes(history)
    if len(found) < 10:
        raise RuntimeError(f"(g) {label}: only {len(found)} wake-ups (the sleeps did not park?)")
    assert run.started_at is not None and run.finished_at is not None
    return LongVariant(
        label=label,
        replay_cache_bytes=cache,
        hold_parked_runs=held,
        run_seconds=(run.finished_at - run.started_at).total_seconds(),
        wakes=found,
        first_ms=statistics.median(w.wake_ms for w in found[:5]),
        last_ms=statistics.median(w.wake_ms for w in found[-5:]),
        slope_ms_per_100_steps=_slope(found),
    )


async def measure(
    target: Target, namespace: str, *, steps: int = 1000, every: int = 10, sleep_ms: float = 20.0
) -> LongHistory:
    spec = {"steps": float(steps), "every": float(every), "sleep_ms": sleep_ms}
    supported = supports_replay_cache()
    variants: list[tuple[str, int | None, int | None]] = [("as is", None, None)]
    if supported:
        cached = f"replay cache on ({CACHE_BYTES >> 20} MiB)"
        variants = [("replay cache off", 0, None), (cached, CACHE_BYTES, None)]
        if supports_holding():  # the judged variant: the worker's best setting for this run
            variants.append((f"{cached}, sleeping runs held", CACHE_BYTES, HELD_RUNS))
    result = LongHistory(
        steps=steps, sleep_every=every, sleep_ms=sleep_ms, cache_supported=supported
    )
    for number, (label, cache, held) in enumerate(variants):
        namespace_n = f"{namespace}-{number}"
        result.variants.append(await _variant(target, namespace_n, label, cache, spec, held))
    return result
