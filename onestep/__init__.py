"""onestep: decorate ordinary functions with `@app.task(source=..., emit=...)` and run them
on an actor runtime that pulls from sources, publishes to sinks and applies policies.

The connectors in `adapters/` are re-exported lazily, so importing onestep never
imports pika or pymysql.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from actors import AppFailed, EncodeError, Failure, StartupError

from ._extras import MissingExtra, missing_extra
from ._onestep_app import OneStepApp
from ._version import __version__
from .core import (
    Delivery,
    ExponentialBackoff,
    InMemoryMetrics,
    JsonFormatter,
    JsonLogFormatter,
    MaxAttempts,
    NoRetry,
    RetryPolicy,
    Sink,
    Source,
    SourceContext,
    StructuredEventLogger,
    TaskContext,
    TaskEvent,
    TaskEventKind,
    configure_logging,
)
from .executor import ProcessExecutor
from .flow import RateLimit
from .ops import DeadLetter, DeadLetterEntry, DeadLetters, NotBrowsable, NotReplayable
from .sources import CronSource, IntervalSource, MemoryQueue
from .state import InMemoryStateStore, SQLiteStateStore, StateStore

# name -> module in adapters/ that defines it; imported on first access (PEP 562).
_LAZY = {
    "BearerAuth": "adapters.webhook",
    "BearerToken": "adapters.webhook",
    "HmacSignature": "adapters.webhook",
    "MySQLConnector": "adapters.mysql",
    "PostgresConnector": "adapters.postgres",
    "PublishRefused": "adapters.rabbitmq",
    "RabbitMQConnector": "adapters.rabbitmq",
    "RedisConnector": "adapters.redis",
    "WebhookResponse": "adapters.webhook",
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
    "JsonLogFormatter",
    "MaxAttempts",
    "MemoryQueue",
    "MissingExtra",
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
    "TaskEventKind",
    "__version__",
    "configure_logging",
]


#: the packages each lazily imported adapter needs (found, not imported, for `__all__`)
_NEEDS = {
    "adapters.mysql": ("pymysql",),
    "adapters.postgres": ("psycopg", "psycopg_pool"),
    "adapters.rabbitmq": ("pika",),
    "adapters.redis": ("redis",),
    "adapters.webhook": ("falcon", "waitress"),
}


def _installed(module: str) -> bool:
    try:
        return all(importlib.util.find_spec(package) is not None for package in _NEEDS[module])
    except (ImportError, ValueError):  # a package blocked or half-imported
        return False


# `from onestep import *` brings the lazy names too (importing their drivers, as `*`
# asks), but only those whose extra is installed: a missing extra leaves its names out
# of `*` instead of failing the import; naming one explicitly raises MissingExtra.
__all__ += sorted(name for name, module in _LAZY.items() if _installed(module))


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'onestep' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise missing_extra(f"onestep.{name}", exc) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_LAZY])
