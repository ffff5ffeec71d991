"""The reply a respond="result" request waits on: WebhookSource hands it to the runtime
with the delivery, and the runtime encodes the handler's result and answers it."""

from __future__ import annotations

import json
import threading
from typing import Any

from actors import EncodeError


class _Reply:
    """Where respond="result" waits. The runtime calls `encode` as soon as the handler
    returns (on its worker thread or the event-loop thread), then the reply itself once,
    from a worker thread, the event-loop thread or a sink actor's thread."""

    __slots__ = ("abandoned", "done", "failure", "text")

    def __init__(self) -> None:
        self.done = threading.Event()
        #: The result as JSON text, set by encode().
        self.text: str | None = None
        self.failure: Any = None
        self.abandoned = False

    def encode(self, result: Any) -> None:
        """Strict JSON (no NaN or Infinity) or an EncodeError, which fails the message
        with kind `encode` before anything is acked: it goes to the dead letter, and the
        client gets 500 with an error id."""
        try:
            self.text = json.dumps(result, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise EncodeError(
                f'respond="result" needs a result JSON can encode: {type(exc).__name__}: {exc}'
            ) from exc

    def __call__(self, result: Any, failure: Any) -> None:
        self.failure = failure
        self.done.set()
