"""onestep: decorate ordinary functions with `@app.task(source=..., emit=...)` and run them
on an actor runtime that pulls from sources, publishes to sinks and applies policies.

The connectors in `adapters/` are re-exported lazily, so importing onestep never
imports pika or pymysql.
"""

from __future__ import annotations

import importlib
from typing import Any

from actors import AppFailed, EncodeError, Failure, StartupError

from ._onestep_app import OneStepApp
from ._version import __version__
from .core import (
    Delivery,
    ExponentialBackoff,
    InMemoryMetrics,
    JsonFormatter,
    MaxAttempts,
    NoRetry,
    RetryPolicy,
    Sink,
    Source,
    SourceContext,
    StructuredEventLogger,
    TaskContext,
    TaskEvent,
    configure_logging,
)
from .executor import ProcessExecutor
from .flow import RateLimit
from .ops import DeadLetter, DeadLetterEntry, DeadLetters, NotBrowsable, NotReplayable
from .sources import CronSource, IntervalSource, MemoryQueue
from .state import InMemoryStateStore, SQLiteStateStore, StateStore

# name -> module in adapters/ that defines it; imported on first access (PEP 562).
_LAZY = {
    "MySQLConnector": "adapters.mysql",
    "PostgresConnector": "adapters.postgres",
    "PublishRefused": "adapters.rabbitmq",
    "RabbitMQConnector": "adapters.rabbitmq",
    "RedisConnector": "adapters.redis",
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
    "RateLimit",
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
            f"e.g. pip install 'onestep[rabbitmq]', 'onestep[mysql]', 'onestep[postgres]' or "
            f"'onestep[redis]'"
        ) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_LAZY])
