"""Connectors to outside systems: RabbitMQ (`adapters.rabbitmq`), MySQL (`adapters.mysql`)
and webhooks (`adapters.webhook`).

Each implements `onestep.Source`/`onestep.Sink`; `onestep` re-exports the connectors
lazily. The webhook embedding helpers are re-exported here, also lazily, so that
`from adapters import mount, wsgi_middleware` imports nothing else.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BearerToken": "adapters.webhook",
    "HmacSignature": "adapters.webhook",
    "mount": "adapters.webhook",
    "wsgi_middleware": "adapters.webhook",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
