"""onestep: decorate ordinary functions with `@app.task(source=..., emit=...)` and run them
on an actor runtime that pulls from sources, publishes to sinks and applies policies.

The connectors in `adapters/` are re-exported lazily, so importing onestep never
imports pika or pymysql.
"""

from __future__ import annotations

import importlib
from typing import Any

from actors import AppFailed, EncodeError, Failure, StartupError

from ._process_executor import ProcessExecutor
from ._version import __version__
from .core._app import OneStepApp
from .core._context import TaskContext
from .core._delivery import Delivery, Sink, Source, SourceContext
from .core._events import InMemoryMetrics, StructuredEventLogger, TaskEvent
from .core._logging import JsonFormatter, configure_logging
from .core._retry import ExponentialBackoff, MaxAttempts, NoRetry, RetryPolicy
from .ops._dead_letters import DeadLetter, DeadLetterEntry, DeadLetters, NotBrowsable, NotReplayable
from .sources._cron import CronSource
from .sources._interval import IntervalSource
from .sources._memory import MemoryQueue
from .state._sqlite import SQLiteStateStore
from .state._store import InMemoryStateStore, StateStore

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
