"""Upstream onestep's connectors under their own names, for migrants: change
`from onestep_rabbitmq import RabbitMQConnector` (or onestep_mysql, onestep_redis,
onestep_sql) into `from onestep.compat import RabbitMQConnector` and the rest stays.

Each name is imported on first use (PEP 562), so importing onestep.compat imports no
connector dependency; see docs/migrating/upstream.md for what differs.
"""

from __future__ import annotations

import importlib
from typing import Any

from .._extras import missing_extra

# name -> module of onestep.compat that defines it; imported on first access
_LAZY = {
    "MySQLConnector": "onestep.compat._mysql",
    "PostgresConnector": "onestep.compat._postgres",
    "RabbitMQConnector": "onestep.compat._rabbitmq",
    "RedisConnector": "onestep.compat._redis",
}

__all__ = ["MySQLConnector", "PostgresConnector", "RabbitMQConnector", "RedisConnector"]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'onestep.compat' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise missing_extra(f"onestep.compat.{name}", exc) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
