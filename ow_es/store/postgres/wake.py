"""LISTEN on a dedicated autocommit connection (outside the pool) for wake-ups.

One listener per client serves every worker loop and every ``result()`` waiter of that client,
and listens on the lanes of the client's workers too (``lanes.py``). A lost connection is
retried with backoff; on reconnect every waiter is woken so it re-reads (notifications sent
meanwhile are lost, and this makes up for them).

Commands on the connection (LISTEN on a new lane, a rebroadcast) stop the wait for
notifications, run, and wait again: psycopg keeps what arrives meanwhile for the next wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ow_es.store.port import WorkflowKey
from ow_es.store.postgres.lanes import Note
from ow_es.store.wake import DoneWaiters, Lane, ReadySignal, ReadyWaiter, Waiter

log = logging.getLogger("ow_es.wake")
_PAYLOAD_LIMIT = 7000  # NOTIFY payloads are capped near 8000 bytes
_LISTEN_SECONDS = 10.0  # how long opening a lane waits for its LISTEN


@dataclass(frozen=True)
class Channels:
    """The NOTIFY channels of one schema and namespace: 'a run may be ready', 'these runs
    ended' (their ids as the payload), and each worker's lane (``lanes``: their prefix)."""

    ready: str
    done: str
    lanes: str = ""
    namespace: str = ""

    @classmethod
    def of(cls, schema: str, namespace: str) -> Channels:
        """Short, safe names: pg_notify rejects names over 63 bytes (LISTEN truncates them)."""
        digest = hashlib.sha256(f"{schema}\0{namespace}".encode()).hexdigest()[:24]
        return cls(
            ready=f"owes_{digest}_ready",
            done=f"owes_{digest}_done",
            lanes=f"owes_{digest}_w_",
            namespace=namespace,
        )

    def lane(self, worker_id: str) -> str:
        """A worker's own channel (40 bytes)."""
        return self.lanes + hashlib.sha256(worker_id.encode()).hexdigest()[:8]

    def payloads(self, *, ready: Mapping[str, WorkflowKey], done: list[str]) -> Iterator[Note]:
        """The notifications to send: at most one for the runs made ready (one run: to a
        worker that serves it), and the ended runs' ids in chunks that fit a payload."""
        if ready:
            if len(ready) == 1:  # to a worker's lane: the run's id lets it claim that one
                ((run_id, workflow),) = ready.items()
                yield Note(self.ready, run_id, self.namespace, workflow)
            else:
                yield Note(self.ready, "")
        chunk: list[str] = []
        size = 0
        for run_id in done:
            if chunk and size + len(run_id) + 1 > _PAYLOAD_LIMIT:
                yield Note(self.done, ",".join(chunk))
                chunk, size = [], 0
            chunk.append(run_id)
            size += len(run_id) + 1
        if chunk:
            yield Note(self.done, ",".join(chunk))


class PostgresWakeChannel:
    pushes = True  # notifications reach every process that listens

    def __init__(self, url: str, channels: Channels) -> None:
        self._url = url
        self._channels = channels
        self._ready = ReadySignal()
        self._done = DoneWaiters()
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._lanes: dict[str, Lane] = {}  # channel -> the open lane of a worker of ours
        self._listened: dict[str, asyncio.Event] = {}  # every lane opened -> set once LISTENed
        self._rebroadcasts = 0  # wake-ups to pass on to every worker
        self._commands = asyncio.Event()  # set when there is something to do on the connection

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

    async def open_lane(self, worker_id: str) -> Lane:
        """LISTEN on the worker's lane; returns once it listens, or after a while without a
        connection (it will on connecting, which wakes every waiter anyway)."""
        await self.start()
        name = self._channels.lane(worker_id)
        lane = Lane(name, self._rebroadcast, self._close_lane)
        self._lanes[name] = lane
        listened = self._listened.setdefault(name, asyncio.Event())
        self._commands.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LISTEN_SECONDS):
                await listened.wait()
        return lane

    @property
    def connected(self) -> bool:
        return self._listening.is_set()

    def _rebroadcast(self) -> None:
        self._rebroadcasts += 1
        self._commands.set()

    def _close_lane(self, lane: Lane) -> None:
        """Its worker claims no more, but stays in the registry while it drains: the lane is
        still listened on, and what comes on it is passed on to every worker."""
        if lane.name is not None and self._lanes.get(lane.name) is lane:
            del self._lanes[lane.name]

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == self._channels.ready:
            self._wake_every_worker()
        elif channel == self._channels.done:
            self._done.notify(payload.split(","))
        elif (lane := self._lanes.get(channel)) is not None:
            lane.offer(payload)
            lane.signal.set()
            self._ready.set()
        else:  # a lane closed by now: its worker no longer claims
            self._rebroadcast()

    def _wake_every_worker(self) -> None:
        """'Something may be ready', naming no run: every worker looks at everything."""
        for lane in self._lanes.values():
            lane.offer(None)
        self._ready.set()

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
            for listened in self._listened.values():
                listened.clear()
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
            for channel in (self._channels.ready, self._channels.done):
                await _listen(conn, channel)
            self._commands.set()  # and the lanes
            await self._run_commands(conn)
            self._listening.set()
            # Anything sent while we were not listening is lost: re-check everything now.
            self._wake_every_worker()
            self._done.notify_all()
            while True:
                if await self._receive(conn):
                    await conn.execute("SELECT 1")  # a quiet period: is it still alive?
                await self._run_commands(conn)

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Dispatch notifications until a command comes (False) or for 30 s (True)."""
        receiving = asyncio.ensure_future(self._notifications(conn))
        commanded = asyncio.ensure_future(self._commands.wait())
        try:
            await asyncio.wait({receiving, commanded}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            commanded.cancel()
            if not receiving.done():
                receiving.cancel()  # only while it waits: what arrives later is kept
                await asyncio.wait({receiving})
        if receiving.cancelled():
            return False
        receiving.result()  # connection trouble is raised here
        return True

    async def _notifications(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for notify in conn.notifies(timeout=30):
            self._dispatch(notify.channel, notify.payload)

    async def _run_commands(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN on new lanes (on every lane after a reconnect), send the rebroadcasts."""
        while self._commands.is_set():
            self._commands.clear()
            for channel, listened in list(self._listened.items()):
                if not listened.is_set():
                    await _listen(conn, channel)
                    listened.set()
            if self._rebroadcasts:
                self._rebroadcasts = 0
                await conn.execute("SELECT pg_notify(%s, '')", [self._channels.ready])


async def _listen(conn: psycopg.AsyncConnection[Any], channel: str) -> None:
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
