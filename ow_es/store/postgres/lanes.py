"""Targeted wake-ups: one run made ready is told to one live worker, not to every one.

Every worker process LISTENs on the namespace's ready channel and on a lane of its own, which
its registry row records (``workers.lane``). When a transaction makes exactly one run ready,
its NOTIFY goes to the lane of one live worker (heartbeat within its ttl) that serves the run's
workflow and version, the least busy first (``busy`` as of its last heartbeat), then at random;
with no such worker, to the ready channel. Several runs made ready in one transaction are
broadcast, as before. So an idle fleet answers a start with one claim, not one per worker (no
thundering herd).

The worker woken on its lane while every slot is busy passes the wake-up on to the ready
channel (``Lane.rebroadcast``). A worker that died without leaving the registry still counts
as live until its ttl runs out: a wake-up sent to its lane is lost, and the run waits for
another worker's fallback poll (``poll_interval``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ow_es.store.port import WorkflowKey

# The channel: a live worker's lane serving the workflow, else the broadcast channel.
_TO_A_LANE = """pg_notify(coalesce((
    SELECT w.lane FROM workers w
    WHERE w.namespace_id = %s AND w.lane IS NOT NULL
      AND w.heartbeat_at + make_interval(secs => w.ttl_seconds) > now()
      AND EXISTS (SELECT FROM jsonb_array_elements(w.workflows) AS s(v)
                  WHERE s.v ->> 0 = %s AND s.v ->> 1 IS NOT DISTINCT FROM %s::text)
    ORDER BY w.busy::float8 / greatest(w.concurrency, 1), random()
    LIMIT 1), %s), %s)"""
TO_THE_CHANNEL = "pg_notify(%s, %s)"


@dataclass(frozen=True)
class Note:
    """One notification to send with a commit: to ``channel``, or, for a ``workflow``, to the
    lane of one live worker that serves it (``channel`` when none does)."""

    channel: str
    payload: str
    namespace: str = ""
    workflow: WorkflowKey | None = None

    @property
    def sql(self) -> str:
        """The ``pg_notify(...)`` call, its parameters as in ``params``."""
        return TO_THE_CHANNEL if self.workflow is None else _TO_A_LANE

    @property
    def params(self) -> list[Any]:
        if self.workflow is None:
            return [self.channel, self.payload]
        name, version = self.workflow
        return [self.namespace, name, version, self.channel, self.payload]
