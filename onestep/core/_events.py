"""Task events and the two built-in handlers: InMemoryMetrics and StructuredEventLogger.

Handlers registered with `app.on_event` run on the event actor's thread (async ones on
the event-loop thread); one that raises is logged and changes nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

EVENT_KINDS = (
    "fetched",
    "started",
    "succeeded",
    "retried",
    "failed",
    "dead_lettered",
    "cancelled",
    "skipped",
)


class TaskEventKind(StrEnum):
    """What a TaskEvent reports. A string: `event.kind == "succeeded"`, `str(kind)`,
    JSON and log lines give the plain name; `event.kind.value` works too (upstream's
    spelling)."""

    FETCHED = "fetched"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


#: Every kind's name, by member (the name `kind` is a TaskEventKind of).
_KIND_OF = {kind.value: kind for kind in TaskEventKind}


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something that happened to one message in one task. `kind` is a TaskEventKind
    (a str)."""

    kind: TaskEventKind
    app: str
    task: str
    source: str
    attempts: int
    emitted_at: float
    duration_s: float | None = None
    failure: dict[str, str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class InMemoryMetrics:
    """Counts events by kind and task. Thread-safe; register with `app.on_event`."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, event: TaskEvent) -> None:
        with self._lock:
            self._counts[(event.kind, event.task)] += 1

    def count(self, kind: str, task: str | None = None) -> int:
        """How many `kind` events were seen, for one task or for all of them."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(EVENT_KINDS)}; got {kind!r}")
        with self._lock:
            if task is not None:
                return self._counts[(kind, task)]
            return sum(n for (k, _), n in self._counts.items() if k == kind)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """{task: {kind: count}} for every task that had an event."""
        with self._lock:
            items = list(self._counts.items())
        result: dict[str, dict[str, int]] = {}
        for (kind, task), n in items:
            result.setdefault(task, {})[kind] = n
        return result


class StructuredEventLogger:
    """Logs one record per event, with the event's fields as `extra` attributes
    (`event_kind`, `app`, `task`, `source`, `attempts`, `emitted_at`, `duration_s`,
    `failure`, `meta`), so that a JSON formatter emits them as fields."""

    def __init__(self, logger: logging.Logger | str = "onestep.events") -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def __call__(self, event: TaskEvent) -> None:
        level = logging.WARNING if event.kind in ("failed", "dead_lettered") else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        extra = {
            "event_kind": event.kind,
            "app": event.app,
            "task": event.task,
            "source": event.source,
            "attempts": event.attempts,
            "emitted_at": event.emitted_at,
            "duration_s": event.duration_s,
            "failure": event.failure,
            "meta": event.meta,
        }
        self.logger.log(
            level, "%s %s (attempts=%d)", event.task, event.kind, event.attempts, extra=extra
        )
