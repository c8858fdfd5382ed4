"""Control flow of a replay: exceptions that unwind the workflow function.

They derive from BaseException, so ``except Exception`` in user code cannot swallow them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ow_es.errors import StepFailed


class Park(BaseException):
    """The run parks (sleep, wait, retry backoff): unwind, then let go of it until ``until``."""

    def __init__(self, kind: str, step: str, until: datetime | None, **detail: Any) -> None:
        super().__init__(kind, step)
        self.kind = kind
        self.step = step
        self.until = until
        self.detail = detail


class RunLost(BaseException):
    """This worker no longer owns the run (lease lost, run canceled): write nothing more."""


class Stale(BaseException):
    """Events arrived that this replay has not seen (a signal, a child's end): replay again."""


def step_failed(name: str, error: dict[str, Any], attempts: int) -> StepFailed:
    """What ``await ctx.step...`` raises once a step has failed for good."""
    return StepFailed(
        name, str(error.get("type", "Error")), str(error.get("message", "")), attempts
    )
