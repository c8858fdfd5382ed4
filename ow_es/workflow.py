"""Workflow definitions: a name, a version, a retry policy and an async function."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ow_es.limits import Limits
from ow_es.payload import check_name
from ow_es.retry import WORKFLOW_DEFAULT, RetryPolicy
from ow_es.schedule import Schedule, Tick

if TYPE_CHECKING:
    from ow_es.client import OpenWorkflow
    from ow_es.handle import RunHandle
    from ow_es.runtime.context import Context

R = TypeVar("R")
WorkflowFn = Callable[..., Awaitable[Any]]


def _schemas(fn: WorkflowFn) -> tuple[bool, Any, Any]:
    """Whether ``fn`` takes an input, and the input and output types from its annotations."""
    params = list(inspect.signature(fn).parameters.values())
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: no schema rather than no workflow
        hints = {}
    takes_input = len(params) >= 2
    input_type = hints.get(params[1].name, Any) if takes_input else Any
    output_type = hints.get("return", Any)
    if output_type is type(None):
        output_type = Any
    return takes_input, input_type, output_type


@dataclass(eq=False)
class Workflow(Generic[R]):
    """A workflow definition. Bound to a client (``@ow.workflow``) it can ``start()`` itself."""

    name: str
    fn: WorkflowFn
    version: str | None = None
    retry: RetryPolicy = WORKFLOW_DEFAULT
    max_step_attempts: int = 1000
    schedule: Schedule | None = None
    limits: Limits | None = None
    takes_input: bool = field(init=False)
    input_type: Any = field(init=False)
    output_type: Any = field(init=False)
    client: OpenWorkflow | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_name(self.name, "workflow name")
        if self.version is not None:
            check_name(self.version, "workflow version")
        if not inspect.iscoroutinefunction(self.fn):
            raise TypeError(f"workflow {self.name!r} must be an async function")
        if self.max_step_attempts < 1:
            raise ValueError("max_step_attempts must be at least 1")
        self.takes_input, self.input_type, self.output_type = _schemas(self.fn)

    @property
    def takes_tick(self) -> bool:
        """Its input annotation is ``Tick``: a scheduled run gets its tick as input."""
        return self.takes_input and self.input_type is Tick

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.name, self.version)

    async def start(self, input: Any = None, **options: Any) -> RunHandle:
        """Start a run through the client this workflow is registered on."""
        if self.client is None:
            raise RuntimeError(
                f"workflow {self.name!r} is not bound to a client: use ow.start(wf, input)"
            )
        return await self.client.start(self, input, **options)

    async def __call__(self, ctx: Context, *args: Any) -> Any:
        return await self.fn(ctx, *args)


def workflow(
    *,
    name: str,
    version: str | None = None,
    retry: RetryPolicy | None = None,
    max_step_attempts: int = 1000,
    schedule: Schedule | None = None,
    limits: Limits | None = None,
) -> Callable[[WorkflowFn], Workflow[Any]]:
    """Define a workflow without a client; register it on a worker's client with
    ``ow.register(wf)`` and start it from any client with ``ow.start(wf, input)``."""

    def define(fn: WorkflowFn) -> Workflow[Any]:
        return Workflow(
            name=name,
            fn=fn,
            version=version,
            retry=retry or WORKFLOW_DEFAULT,
            max_step_attempts=max_step_attempts,
            schedule=schedule,
            limits=limits,
        )

    return define
