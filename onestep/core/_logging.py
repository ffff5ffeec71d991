"""Logging set-up for `onestep run`: plain text or one JSON object per line.

Called once by the CLI (in each process under `--processes N`: the parent and every
worker); library code only ever calls `logging.getLogger`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message, any `extra`
    fields, and the exception text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=repr, ensure_ascii=False)


class JsonLogFormatter(JsonFormatter):
    """Upstream onestep's name for JsonFormatter, with its `attach(handler)`."""

    @classmethod
    def attach(cls, handler: logging.Handler) -> logging.Handler:
        """Format `handler`'s records as JSON lines; returns the handler."""
        handler.setFormatter(cls())
        return handler


class WorkerNameFilter(logging.Filter):
    """Puts `worker` (`w1`, ..., or `parent`) on every record a handler emits, so that the
    lines of the processes of `onestep run --processes N` say which one wrote them."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


#: Set (to "1") by `onestep run --quiet-failures`, and inherited by its worker processes:
#: the failure log (`onestep.failures`) then writes only its ERROR lines (dead letters and
#: final failures), not one line per retry or timeout.
QUIET_FAILURES_ENV = "ONESTEP_QUIET_FAILURES"


def quiet_failures(ctx: Any, param: Any, value: bool) -> bool:
    """The `--quiet-failures` option's callback (click calls it while parsing): turn the
    failure log down to ERROR in this process and, through the environment, in the
    worker processes it starts."""
    if value:
        os.environ[QUIET_FAILURES_ENV] = "1"
        logging.getLogger("onestep.failures").setLevel(logging.ERROR)
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)-7s [%(worker)s] %(name)s: %(message)s"


def configure_logging(level: str = "INFO", fmt: str = "text", *, worker: str | None = None) -> None:
    """Send the root logger to stderr at `level` in the `text` or `json` format. With
    `worker`, every line names that process: `[w1]` in text, `"worker": "w1"` in JSON."""
    if level.upper() not in LOG_LEVELS:
        raise ValueError(f"level must be one of {', '.join(LOG_LEVELS)}; got {level!r}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"fmt must be 'text' or 'json'; got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(TEXT_FORMAT if worker is None else WORKER_TEXT_FORMAT)
        )
    if worker is not None:
        handler.addFilter(WorkerNameFilter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pykka logs every error returned to an ask() caller at INFO with a traceback; onestep
    # reports those errors itself, so keep pykka quiet unless debugging.
    # pika logs every connection step at INFO.
    if os.environ.get(QUIET_FAILURES_ENV) == "1":
        logging.getLogger("onestep.failures").setLevel(logging.ERROR)
    for noisy in ("pykka", "pika"):
        logging.getLogger(noisy).setLevel("DEBUG" if level.upper() == "DEBUG" else "WARNING")
