"""ow-es: durable, event-sourced workflows for Python on PostgreSQL or SQLite."""

from ow_es.client import OpenWorkflow, connect
from ow_es.errors import (
    ConcurrencyError,
    ConfigError,
    InvalidTransition,
    NonRetryableError,
    OwEsError,
    ResultTimeout,
    RetryAfter,
    RunNotFound,
    SchemaMismatch,
    StepFailed,
    StepLimitExceeded,
    StepTimeout,
    StoreUnavailable,
    ValidationError,
    WorkflowCanceled,
    WorkflowFailed,
)
from ow_es.handle import RunHandle
from ow_es.limits import Limits, StoredLimits
from ow_es.models import Event, RunPage, RunState, StepAttempt, WorkerInfo, WorkflowRun
from ow_es.retry import RetryPolicy
from ow_es.runtime.context import Context, RunInfo
from ow_es.runtime.worker import Worker
from ow_es.schedule import Schedule, ScheduleInfo, Tick
from ow_es.workflow import Workflow, workflow

__version__ = "0.1.0"

__all__ = [
    "ConcurrencyError",
    "ConfigError",
    "Context",
    "Event",
    "InvalidTransition",
    "Limits",
    "NonRetryableError",
    "OpenWorkflow",
    "OwEsError",
    "ResultTimeout",
    "RetryAfter",
    "RetryPolicy",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "RunPage",
    "RunState",
    "Schedule",
    "ScheduleInfo",
    "SchemaMismatch",
    "StepAttempt",
    "StepFailed",
    "StepLimitExceeded",
    "StepTimeout",
    "StoredLimits",
    "StoreUnavailable",
    "Tick",
    "ValidationError",
    "Worker",
    "WorkerInfo",
    "Workflow",
    "WorkflowCanceled",
    "WorkflowFailed",
    "WorkflowRun",
    "__version__",
    "connect",
    "workflow",
]
