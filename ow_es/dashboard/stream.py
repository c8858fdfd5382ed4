"""``GET /api/stream``: the event log as server-sent events.

Reads through ``store.read_log`` (on PostgreSQL the transaction-id barrier read, so no event
is skipped under concurrent commits), woken by the store's wake channel, with a short fallback
poll for events that send no notification (steps) and for SQLite.

Frames: ``event:`` the event type, ``data:`` the event as JSON (with ``run_id``), and ``id:``
the ``read_log`` cursor after the event, on the last event of each batch read (a browser
resends the last id it saw as ``Last-Event-ID`` when it reconnects; an id is always an exact
resume point, and events of a batch cut off mid-way may come again: ``(run_id, seq)`` is
unique). Without a cursor the stream starts at the end of the log; ``after=start`` replays it
from the beginning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ow_es.client import OpenWorkflow
from ow_es.dashboard.api import client_of
from ow_es.dashboard.jsonio import ApiError, dumps
from ow_es.errors import OwEsError
from ow_es.models import Event
from ow_es.store.codec import current_shape
from ow_es.store.port import LogBatch

BATCH = 500
POLL_SECONDS = 0.5
PING_SECONDS = 15.0
FROM_START = "start"
log = logging.getLogger("ow_es.dashboard")


def frame(event: Event, cursor: str | None) -> str:
    lines = [] if cursor is None else [f"id: {cursor}"]
    lines += [f"event: {event.type}", f"data: {dumps(current_shape(event))}"]
    return "\n".join(lines) + "\n\n"


def frames(batch: LogBatch) -> str:
    last = len(batch.events) - 1
    return "".join(
        frame(event, batch.cursor if i == last else None) for i, event in enumerate(batch.events)
    )


async def _first_batch(client: OpenWorkflow, after: str | None) -> tuple[str | None, LogBatch]:
    """Where to start, and the first batch (a malformed cursor is a 422 here, not mid-stream)."""
    store = client.store
    if after is None:
        after = await store.log_tail()
    elif after == FROM_START:
        after = None
    try:
        return after, await store.read_log(after, BATCH)
    except ValueError:
        raise ApiError(422, f"invalid stream cursor {after!r}") from None


async def stream(request: Request) -> Response:
    client = client_of(request)
    store = client.store
    after = request.query_params.get("after") or request.headers.get("last-event-id") or None
    start, first = await _first_batch(client, after)
    wake = store.wake_channel()
    await wake.start()
    ready = wake.ready_waiter()  # its own view: it takes no wake-up from a worker

    async def events() -> AsyncIterator[str]:
        cursor = start
        # The ready frame's id lets a reconnect (after 1 s) resume from here; from an empty
        # log, a reconnect replays the log from its start.
        hello = {"cursor": cursor}
        yield f"retry: 1000\nid: {cursor or FROM_START}\nevent: ready\ndata: {dumps(hello)}\n\n"
        batch = first
        last_write = time.monotonic()
        stopping: asyncio.Event = request.app.state.stopping
        while not stopping.is_set():
            if batch.events:
                yield frames(batch)
                cursor, last_write = batch.cursor, time.monotonic()
            if len(batch.events) < BATCH:
                await ready.wait(POLL_SECONDS)
                if time.monotonic() - last_write > PING_SECONDS:
                    yield ": ping\n\n"
                    last_write = time.monotonic()
            try:
                batch = await store.read_log(cursor, BATCH)
            except OwEsError as exc:  # the database is away: say so, keep the connection
                log.warning("event stream: %s", exc)
                yield f"event: stream_error\ndata: {dumps({'error': str(exc)})}\n\n"
                batch = LogBatch(events=[], cursor=cursor)
                await asyncio.sleep(1.0)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
