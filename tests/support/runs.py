"""Reading a run in assertions and wait conditions."""

from __future__ import annotations

from typing import Any

import ow_es


async def event_types(client: ow_es.OpenWorkflow, run_id: str) -> list[str]:
    """The types of the run's events, in order."""
    return [event.type for event in await client.history(run_id)]


async def parked(client: ow_es.OpenWorkflow, run_id: str, kind: str, **match: Any) -> bool:
    """The run is parked (no worker holds it) waiting for ``kind`` ("signal", "child",
    "sleep", "retry"), and its ``waiting_for`` has the values in ``match``."""
    run = await client.store.get_run(run_id)
    if run is None or run.worker_id is not None or not run.waiting_for:
        return False
    waiting = run.waiting_for
    return waiting.get("kind") == kind and all(waiting.get(k) == v for k, v in match.items())
