"""Every error ow-es raises derives from :class:`OwEsError`."""

from __future__ import annotations

from datetime import datetime

from ow_es.durations import Duration, to_datetime


class OwEsError(Exception):
    """Base class of all ow-es errors."""


class ConfigError(OwEsError):
    """An invalid setting: a bad URL, schema or namespace name."""


class StoreUnavailable(OwEsError):
    """The database cannot be reached, or was migrated by a newer ow-es."""


class SchemaMismatch(StoreUnavailable):
    """The database was migrated by a newer ow-es than this one."""


class ConcurrencyError(OwEsError):
    """A fenced write was refused: the writer no longer holds the run's claim."""


class StaleRun(ConcurrencyError):
    """A write expected the run unchanged, but another event was appended to it meanwhile."""


class ValidationError(OwEsError, ValueError):
    """Input, a result or signal data does not fit its schema or the payload limit."""


class RunNotFound(OwEsError, LookupError):
    """No run with that id exists in this namespace."""


class InvalidTransition(OwEsError):
    """The run's status does not allow the requested change."""


class WorkflowFailed(OwEsError):
    """``handle.result()`` of a run that failed."""

    def __init__(self, run_id: str, error: dict[str, object] | None) -> None:
        self.run_id = run_id
        self.error = error or {}
        self.error_type = str(self.error.get("type", "Error"))
        self.error_message = str(self.error.get("message", ""))
        super().__init__(f"run {run_id} failed: {self.error_type}: {self.error_message}")


class WorkflowCanceled(OwEsError):
    """``handle.result()`` of a run that was canceled."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id} was canceled")


class ResultTimeout(OwEsError, TimeoutError):
    """``handle.result(timeout=)`` ran out before the run finished."""


class StepFailed(OwEsError):
    """A step spent its retry budget (raised inside the workflow)."""

    def __init__(self, step_name: str, error_type: str, message: str, attempts: int) -> None:
        self.step_name = step_name
        self.error_type = error_type
        self.message = message
        self.attempts = attempts
        super().__init__(
            f"step {step_name!r} failed after {attempts} attempt(s): {error_type}: {message}"
        )


class StepTimeout(OwEsError, TimeoutError):
    """A step attempt ran past its ``timeout=`` (a retryable failure)."""


class RetryAfter(OwEsError):
    """Raise from a step to park the run until ``when`` (a duration from now, or an aware
    datetime) without spending an attempt of the step's budget: a remote API's 429 with a
    ``Retry-After`` header, a rate limit. Past ``max_suspensions`` (a setting of ``connect()``)
    it counts as an ordinary failure."""

    def __init__(self, when: Duration | datetime) -> None:
        self.until = to_datetime(when, "RetryAfter")
        super().__init__(f"retry after {self.until.isoformat()}")


class NonRetryableError(OwEsError):
    """Raise it (or a subclass) from a step to fail the step at once, without retries."""


class StepLimitExceeded(OwEsError):
    """A run made more step attempts than its workflow's ``max_step_attempts``."""
