"""Blocking client calls for sync code (Django, scripts).

The async client is the source of truth: every call here runs the async one on a private
event loop in a background thread, so nothing is implemented twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from ow_es.client import OpenWorkflow
from ow_es.handle import RunHandle
from ow_es.models import Event, RunPage, RunState, WorkflowRun
from ow_es.workflow import Workflow

T = TypeVar("T")

__all__ = ["SyncOpenWorkflow", "SyncRunHandle", "connect"]


class _Portal:
    """An event loop in a daemon thread that runs coroutines for blocking callers."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ow-es-sync", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class SyncRunHandle:
    def __init__(self, handle: RunHandle, portal: _Portal) -> None:
        self._handle = handle
        self._portal = portal
        self.run_id = handle.run_id
        self.workflow_name = handle.workflow_name

    def result(self, timeout: float | None = None) -> Any:
        return self._portal.call(self._handle.result(timeout=timeout))

    def status(self) -> WorkflowRun:
        return self._portal.call(self._handle.status())

    def cancel(self, *, cascade: bool = True) -> None:
        self._portal.call(self._handle.cancel(cascade=cascade))


class SyncOpenWorkflow:
    """The client calls of :class:`ow_es.OpenWorkflow`, blocking. Workflows are defined and
    executed by async workers; this client starts and manages runs."""

    def __init__(self, client: OpenWorkflow, portal: _Portal) -> None:
        self.client = client
        self._portal = portal

    def _handle(self, handle: RunHandle) -> SyncRunHandle:
        return SyncRunHandle(handle, self._portal)

    def start(
        self, workflow: Workflow[Any] | str, input: Any = None, **options: Any
    ) -> SyncRunHandle:
        return self._handle(self._portal.call(self.client.start(workflow, input, **options)))

    def get_handle(self, run_id: str) -> SyncRunHandle:
        return self._handle(self._portal.call(self.client.get_handle(run_id)))

    def cancel(self, run_id: str, *, cascade: bool = True) -> None:
        self._portal.call(self.client.cancel(run_id, cascade=cascade))

    def resume(self, run_id: str) -> SyncRunHandle:
        return self._handle(self._portal.call(self.client.resume(run_id)))

    def send_signal(
        self, signal: str, data: Any = None, *, idempotency_key: str | None = None
    ) -> list[str]:
        return self._portal.call(
            self.client.send_signal(signal, data, idempotency_key=idempotency_key)
        )

    def list_runs(self, **filters: Any) -> RunPage:
        return self._portal.call(self.client.list_runs(**filters))

    def history(self, run_id: str) -> list[Event]:
        return self._portal.call(self.client.history(run_id))

    def state_at(self, run_id: str, seq: int) -> RunState:
        return self._portal.call(self.client.state_at(run_id, seq))

    def close(self) -> None:
        try:
            self._portal.call(self.client.close())
        finally:
            self._portal.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(
    url: str | None = None, namespace: str | None = None, schema: str | None = None, **options: Any
) -> SyncOpenWorkflow:
    """A connected blocking client; same arguments as :func:`ow_es.connect`."""
    portal = _Portal()
    try:
        client = portal.call(OpenWorkflow(url, namespace, schema, **options).connect())
    except BaseException:
        portal.stop()
        raise
    return SyncOpenWorkflow(client, portal)
