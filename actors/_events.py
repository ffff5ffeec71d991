"""EventActor and EventEmitter: task events leave the hot path through one mailbox.

Emitters build a plain tuple on the emitting thread; the EventActor hands it to the
domain layer's callback on its own thread, so a slow or failing handler stalls nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ._base import EngineActor, Request
from ._ports import EventCallback, Failure

logger = logging.getLogger("onestep.actors.events")


class EventActor(EngineActor):
    """Calls the event callback for every record, on this actor's thread."""

    label = "event actor"

    def __init__(self, callback: EventCallback) -> None:
        super().__init__()
        self._callback = callback
        self._handlers[tuple] = self._on_record
        self._handlers[Flush] = self._on_flush

    def _on_flush(self, _: Flush) -> None:
        return None

    def _on_record(self, record: Any) -> None:
        try:
            self._callback(record)
        except Exception:
            logger.exception("event handler failed on %r", record[0])


class Flush(Request):
    """Answered once every event sent before it has been handled (FIFO mailbox)."""

    __slots__ = ()


class EventEmitter:
    """Sends event records for one task to the EventActor."""

    __slots__ = ("_ref", "source", "task")

    def __init__(self, ref: Any, task: str, source: str) -> None:
        self._ref = ref
        self.task = task
        self.source = source

    def emit(
        self,
        kind: str,
        delivery: Any,
        duration_s: float | None = None,
        failure: Failure | None = None,
    ) -> None:
        """Callable from any thread."""
        self._ref.tell(
            (
                kind,
                self.task,
                self.source,
                delivery.attempts,
                time.time(),
                duration_s,
                failure,
                delivery.meta,
            )
        )
