"""Keeps pika's own log records out of sight while onestep reports the same problem itself
(a failed connect, a dead connection found by a keepalive); used by RabbitMQConnector and
the producer pool, on whichever thread connects.

pika logs a failed connect five times at ERROR, once with a traceback. Inside `quiet()`
the records of the calling thread are demoted to DEBUG: they still appear when pika's
loggers are enabled for DEBUG (`onestep run --log-level DEBUG`) and are dropped otherwise,
so the user sees onestep's one-line error instead.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import pika.adapters.blocking_connection  # noqa: F401  (so that its loggers exist below)


class _Depth(threading.local):
    value = 0


_depth = _Depth()


class _DemoteWhileQuiet(logging.Filter):
    """Demotes records logged on a thread inside `quiet()` to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _depth.value or record.levelno <= logging.DEBUG:
            return True
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER = _DemoteWhileQuiet()


def _install() -> None:
    """Attach the filter to every pika logger (a logger's filters see only the records
    it creates, not its children's, so each module's logger needs it)."""
    for name, item in list(logging.Logger.manager.loggerDict.items()):
        is_pika = name == "pika" or name.startswith("pika.")
        if is_pika and isinstance(item, logging.Logger) and _FILTER not in item.filters:
            item.addFilter(_FILTER)


_install()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """pika's records on this thread are DEBUG records inside the block."""
    _depth.value += 1
    try:
        yield
    finally:
        _depth.value -= 1
