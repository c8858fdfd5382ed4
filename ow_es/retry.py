"""Retry policies for steps and workflow bodies."""

from __future__ import annotations

from dataclasses import dataclass, field

from ow_es.durations import Duration, to_seconds
from ow_es.errors import NonRetryableError, StepLimitExceeded, ValidationError


@dataclass(frozen=True)
class RetryPolicy:
    """Delay before attempt n+1 is ``min(initial * coefficient**(n-1), maximum)``, no jitter."""

    initial_interval: Duration = "1s"
    backoff_coefficient: float = 2.0
    maximum_interval: Duration = "100s"
    maximum_attempts: int = 10
    non_retryable: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        to_seconds(self.initial_interval, "initial_interval")
        to_seconds(self.maximum_interval, "maximum_interval")
        if self.maximum_attempts < 1:
            raise ValueError("maximum_attempts must be at least 1")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be at least 1")

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
        initial = to_seconds(self.initial_interval)
        maximum = to_seconds(self.maximum_interval)
        return float(min(initial * self.backoff_coefficient ** (failed_attempt - 1), maximum))

    def retryable(self, exc: BaseException) -> bool:
        return not isinstance(
            exc, (NonRetryableError, ValidationError, StepLimitExceeded, *self.non_retryable)
        )


STEP_DEFAULT = RetryPolicy()
WORKFLOW_DEFAULT = RetryPolicy(maximum_attempts=1)
