"""onestep: decorate ordinary functions with `@app.task(source=..., emit=...)` and run them
on an actor runtime that pulls from sources, publishes to sinks and applies policies.

The connectors in `adapters/` are re-exported lazily, so importing onestep never
imports pika or pymysql.
"""

from __future__ import annotations

import importlib
from typing import Any

from actors import AppFailed, EncodeError, Failure, StartupError

from ._app import OneStepApp
from ._context import TaskContext
from ._cron import CronSource
from ._dead_letters import DeadLetter, DeadLetterEntry, DeadLetters, NotBrowsable, NotReplayable
from ._delivery import Delivery, Sink, Source, SourceContext
from ._events import InMemoryMetrics, StructuredEventLogger, TaskEvent
from ._interval import IntervalSource
from ._logging import JsonFormatter, configure_logging
from ._memory import MemoryQueue
from ._retry import ExponentialBackoff, MaxAttempts, NoRetry, RetryPolicy
from ._sqlite_state import SQLiteStateStore
from ._state import InMemoryStateStore, StateStore
from ._version import __version__
from .executor import ProcessExecutor

# name -> module in adapters/ that defines it; imported on first access (PEP 562).
_LAZY = {
    "MySQLConnector": "adapters.mysql",
    "PublishRefused": "adapters.rabbitmq",
    "RabbitMQConnector": "adapters.rabbitmq",
    "WebhookSource": "adapters.webhook",
}

__all__ = [
    "AppFailed",
    "CronSource",
    "DeadLetter",
    "DeadLetterEntry",
    "DeadLetters",
    "Delivery",
    "EncodeError",
    "ExponentialBackoff",
    "Failure",
    "InMemoryMetrics",
    "InMemoryStateStore",
    "IntervalSource",
    "JsonFormatter",
    "MaxAttempts",
    "MemoryQueue",
    "NoRetry",
    "NotBrowsable",
    "NotReplayable",
    "OneStepApp",
    "ProcessExecutor",
    "RetryPolicy",
    "SQLiteStateStore",
    "Sink",
    "Source",
    "SourceContext",
    "StartupError",
    "StateStore",
    "StructuredEventLogger",
    "TaskContext",
    "TaskEvent",
    "__version__",
    "configure_logging",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'onestep' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"onestep.{name} needs the package {exc.name!r}; install the matching extra, "
            f"e.g. pip install 'onestep[rabbitmq]' or 'onestep[mysql]'"
        ) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_LAZY])
