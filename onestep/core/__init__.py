"""The core API: the app, task registration, context, delivery, retry policies, events,
logging and the target loader. Imported by every other part of onestep; imports none of
them (only `actors`, `onestep._values` and `onestep.state`).
"""

from ._app import AppCore
from ._context import TaskContext
from ._delivery import Delivery, Sink, Source, SourceContext
from ._events import InMemoryMetrics, StructuredEventLogger, TaskEvent, TaskEventKind
from ._hooks import STOP_SIGNALS
from ._internals import AppInternals
from ._loader import TARGET_MODULE_PREFIX, TargetError, load_app
from ._logging import JsonFormatter, JsonLogFormatter, configure_logging
from ._retry import ExponentialBackoff, MaxAttempts, NoRetry, RetryPolicy
from ._task import ExecutorOptions, TaskSpec

__all__ = [
    "STOP_SIGNALS",
    "TARGET_MODULE_PREFIX",
    "AppCore",
    "AppInternals",
    "Delivery",
    "ExecutorOptions",
    "ExponentialBackoff",
    "InMemoryMetrics",
    "JsonFormatter",
    "JsonLogFormatter",
    "MaxAttempts",
    "NoRetry",
    "RetryPolicy",
    "Sink",
    "Source",
    "SourceContext",
    "StructuredEventLogger",
    "TargetError",
    "TaskContext",
    "TaskEvent",
    "TaskEventKind",
    "TaskSpec",
    "configure_logging",
    "load_app",
]
