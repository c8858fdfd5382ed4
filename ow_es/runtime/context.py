"""What a workflow function sees: ``ctx.run`` (the run) and ``ctx.step`` (its steps)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

import msgspec

from ow_es.durations import Duration
from ow_es.retry import RetryPolicy
from ow_es.runtime.steps import child, function, waits
from ow_es.runtime.steps.host import StepHost

if TYPE_CHECKING:
    from ow_es.workflow import Workflow

T = TypeVar("T")


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    workflow_name: str
    version: str | None
    attempt: int
    created_at: datetime
    started_at: datetime | None


class Steps:
    """Durable steps. Each is recorded once; on replay its recorded result is returned."""

    def __init__(self, host: StepHost) -> None:
        self._host = host

    @overload
    async def run(
        self,
        name: str,
        fn: Callable[[], Awaitable[T]],
        *,
        retry: RetryPolicy | None = None,
        timeout: Duration | None = None,
    ) -> T: ...

    @overload
    async def run(
        self,
        name: str,
        fn: Callable[[], T],
        *,
        retry: RetryPolicy | None = None,
        timeout: Duration | None = None,
    ) -> T: ...

    async def run(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        retry: RetryPolicy | None = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Run ``fn`` once (retrying failures per ``retry``); an ``async def`` is awaited on the
        worker's loop, a plain function runs in the worker's thread pool."""
        return await function.run_step(self._host, name, fn, retry=retry, timeout=timeout)

    async def sleep(self, name: str, duration: Duration) -> None:
        """Park the run for ``duration``; the worker slot is freed meanwhile."""
        await self._host.tracked(waits.sleep(self._host, name, duration=duration))

    async def sleep_until(self, name: str, until: datetime) -> None:
        await self._host.tracked(waits.sleep(self._host, name, until=until))

    async def wait_for_signal(
        self, signal: str, *, timeout: Duration | None = None, name: str | None = None
    ) -> Any:
        """The data of the next ``signal`` sent to this run, or None after ``timeout``."""
        waiting = waits.wait_for_signal(self._host, signal, timeout=timeout, name=name)
        return await self._host.tracked(waiting)

    async def send_signal(
        self, signal: str, data: Any = None, *, name: str | None = None
    ) -> list[str]:
        """Deliver ``signal`` to every run waiting on it; returns their ids."""
        return await waits.send_signal(self._host, signal, data, name=name)

    async def run_workflow(
        self,
        workflow: Workflow[Any] | str,
        input: Any = None,
        *,
        version: str | None = None,
        timeout: Duration | None = None,
        name: str | None = None,
    ) -> Any:
        """Start a child run (once, across replays) and return its output."""
        started = child.run_child(
            self._host, workflow, input, version=version, timeout=timeout, name=name
        )
        return await self._host.tracked(started)


class Context:
    def __init__(self, run: RunInfo, steps: Steps) -> None:
        self.run = run
        self.step = steps
