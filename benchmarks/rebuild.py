"""(e) projection rebuild speed: ``reproject`` folding a sizeable event log.

The log is written through the store API in big batches, so it is a real, valid log (every
event went through the planner, the fencing and the inline projection): runs are created
``CHUNK`` at a time in one append, claimed (``store.claim``, which appends ``run_claimed``),
then each of their steps is appended as one fenced ``step_completed`` per run and transaction
(``CHUNK`` runs per transaction, so the log interleaves the runs step by step, as a busy worker
would), and finally ``run_completed``. Each run holds ``steps + 3`` events.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence

from records import Rebuild
from target import Target, client

import ow_es
from ow_es import events as ev
from ow_es.durations import utcnow
from ow_es.store import Appended, AppendRequest, Store

WORKFLOW = "bench-rebuild"  # and a suffix per writing lane
WORKER_ID = "bench-rebuild-writer"
CHUNK = 1000  # runs per append transaction
PARALLEL = 2  # chunks written at once (each on its own pooled connection)
LEASE_SECONDS = 3600.0  # the writer holds its claims for the whole build


def events_per_run(steps: int) -> int:
    return steps + 3  # run_created, run_claimed, the steps, run_completed


async def _append(store: Store, requests: Sequence[AppendRequest]) -> None:
    outcomes = await store.append(requests)
    for outcome in outcomes:
        if not isinstance(outcome, Appended):
            raise RuntimeError(f"building the log: an append was rejected: {outcome!r}")


async def _claim_all(store: Store, workflow: str, ids: set[str]) -> dict[str, str]:
    """Claim these (ready) runs: ``{run_id: claim_token}``."""
    tokens: dict[str, str] = {}
    for _ in range(50):
        claimed = await store.claim(
            WORKER_ID, [(workflow, None)], len(ids) - len(tokens), LEASE_SECONDS
        )
        for run in claimed:
            if run.claim_token is None or run.id not in ids:
                raise RuntimeError(f"building the log: unexpected claim of {run.id}")
            tokens[run.id] = run.claim_token
        if len(tokens) == len(ids):
            return tokens
        if not claimed:
            await asyncio.sleep(0.05)  # created a hair in the future of the server's clock
    raise RuntimeError(f"building the log: claimed {len(tokens)} of {len(ids)} runs")


async def _write_chunk(store: Store, workflow: str, first: int, runs: int, steps: int) -> None:
    ids = [uuid.uuid4().hex for _ in range(runs)]
    now = utcnow()
    await _append(
        store,
        [
            AppendRequest(
                run_id=run_id,
                events=[
                    ev.RunCreated(workflow_name=workflow, input={"n": first + i}, available_at=now)
                ],
            )
            for i, run_id in enumerate(ids)
        ],
    )
    tokens = await _claim_all(store, workflow, set(ids))
    for step in range(steps):
        started = utcnow()
        await _append(
            store,
            [
                AppendRequest(
                    run_id=run_id,
                    claim_token=tokens[run_id],
                    events=[
                        ev.StepCompleted(
                            step_name=f"step-{step}",
                            kind="function",
                            attempt=1,
                            output={"step": step, "value": first + i},
                            started_at=started,
                            worker_id=WORKER_ID,
                        )
                    ],
                )
                for i, run_id in enumerate(ids)
            ],
        )
    await _append(
        store,
        [
            AppendRequest(
                run_id=run_id,
                claim_token=tokens[run_id],
                events=[ev.RunCompleted(output={"steps": steps}, worker_id=WORKER_ID)],
            )
            for run_id in ids
        ],
    )


async def build_log(
    ow: ow_es.OpenWorkflow,
    *,
    events: int,
    steps: int,
    progress: Callable[[str], None],
) -> int:
    """Write about ``events`` events (whole runs of ``steps`` steps); returns the run count.

    ``PARALLEL`` lanes write chunks at once; each lane has its own workflow name, so that its
    claims take exactly the runs it created."""
    runs = max(1, round(events / events_per_run(steps)))
    chunks = [(first, min(CHUNK, runs - first)) for first in range(0, runs, CHUNK)]
    done = 0

    async def lane(number: int) -> None:
        nonlocal done
        workflow = f"{WORKFLOW}-{number}"
        for first, size in chunks[number::PARALLEL]:
            await _write_chunk(ow.store, workflow, first, size, steps)
            before, done = done, done + size
            if done == runs or before * 10 // runs < done * 10 // runs:
                progress(f"(e) log: {done}/{runs} runs written")

    await asyncio.gather(*(lane(number) for number in range(PARALLEL)))
    return runs


async def measure(
    target: Target,
    namespace: str,
    *,
    events: int = 200_000,
    steps: int = 10,
    progress: Callable[[str], None] = lambda _: None,
) -> Rebuild:
    async with client(target, namespace) as ow:
        began = time.perf_counter()
        runs = await build_log(ow, events=events, steps=steps, progress=progress)
        build_seconds = time.perf_counter() - began
        built = runs * events_per_run(steps)

        progress(f"(e) reproject() over the log ({built} events of this phase) ...")
        began = time.perf_counter()
        swap = await ow.reproject()
        seconds = time.perf_counter() - began
        if not swap.swapped:
            raise RuntimeError("reproject() did not swap the rebuilt tables in")
        if swap.events < built:
            raise RuntimeError(f"reproject() folded {swap.events} events, fewer than {built}")

        progress("(e) reproject(verify=True) ...")
        began = time.perf_counter()
        verify = await ow.reproject(verify=True)
        verify_seconds = time.perf_counter() - began
    return Rebuild(
        runs=runs,
        steps_per_run=steps,
        events_built=built,
        build_seconds=build_seconds,
        build_events_per_s=built / build_seconds,
        log_events=swap.counts.get("events", swap.events),
        events=swap.events,
        seconds=seconds,
        events_per_s=swap.events / seconds,
        gate_ms=swap.gate_seconds * 1000,
        gate_attempts=swap.gate_attempts,
        verify_events=verify.events,
        verify_seconds=verify_seconds,
        verify_events_per_s=verify.events / verify_seconds,
        verify_gate_ms=verify.gate_seconds * 1000,
        verify_differences=len(verify.differences),
    )
