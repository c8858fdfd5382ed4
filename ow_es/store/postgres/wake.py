"""LISTEN on a dedicated autocommit connection (outside the pool) for wake-ups.

One listener per client serves every worker loop and every ``result()`` waiter of that client.
A lost connection is retried with backoff; on reconnect every waiter is woken so it re-reads
(notifications sent meanwhile are lost, and this makes up for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ow_es.store.wake import DoneWaiters, ReadySignal, ReadyWaiter, Waiter

log = logging.getLogger("ow_es.wake")
_PAYLOAD_LIMIT = 7000  # NOTIFY payloads are capped near 8000 bytes


@dataclass(frozen=True)
class Channels:
    """The NOTIFY channels of one schema and namespace: 'a run may be ready' and 'these runs
    ended' (their ids as the payload)."""

    ready: str
    done: str

    @classmethod
    def of(cls, schema: str, namespace: str) -> Channels:
        """Short, safe names: pg_notify rejects names over 63 bytes (LISTEN truncates them)."""
        digest = hashlib.sha256(f"{schema}\0{namespace}".encode()).hexdigest()[:24]
        return cls(ready=f"owes_{digest}_ready", done=f"owes_{digest}_done")

    def payloads(self, *, ready: bool, done: list[str]) -> Iterator[tuple[str, str]]:
        """The notifications to send: at most one on the ready channel, and the ended runs'
        ids in chunks that fit a payload."""
        if ready:
            yield self.ready, ""
        chunk: list[str] = []
        size = 0
        for run_id in done:
            if chunk and size + len(run_id) + 1 > _PAYLOAD_LIMIT:
                yield self.done, ",".join(chunk)
                chunk, size = [], 0
            chunk.append(run_id)
            size += len(run_id) + 1
        if chunk:
            yield self.done, ",".join(chunk)


class PostgresWakeChannel:
    pushes = True  # notifications reach every process that listens

    def __init__(self, url: str, channels: Channels) -> None:
        self._url = url
        self._ready_channel = channels.ready
        self._done_channel = channels.done
        self._ready = ReadySignal()
        self._done = DoneWaiters()
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def start(self) -> None:
        """Idempotent: every worker loop and result() waiter of the client shares one listener."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="ow-es-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self._listening.wait()

    async def stop(self) -> None:
        """Stop listening (when the client closes)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def ready_waiter(self) -> ReadyWaiter:
        return self._ready.waiter()

    def subscribe_done(self, run_id: str) -> Waiter:
        return self._done.subscribe(run_id)

    @property
    def connected(self) -> bool:
        return self._listening.is_set()

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any connection trouble: retry, never die
                log.warning("wake-up listener lost its connection: %s", exc)
            if self._listening.is_set():
                backoff = 0.1  # it was listening: a new incident, not another failed retry
            self._listening.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _listen_once(self) -> None:
        conn: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            connect_timeout=10,
            # Notice a half-open socket within about a minute instead of hanging forever.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        async with conn:
            for channel in (self._ready_channel, self._done_channel):
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._listening.set()
            # Anything sent while we were not listening is lost: re-check everything now.
            self._ready.set()
            self._done.notify_all()
            while True:
                async for notify in conn.notifies(timeout=30):
                    if notify.channel == self._ready_channel:
                        self._ready.set()
                    else:
                        self._done.notify(notify.payload.split(","))
                # A quiet period: prove the connection is still alive.
                await conn.execute("SELECT 1")
