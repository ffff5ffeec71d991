"""Turning exceptions and stuck threads into Failure records.

Called on worker threads, the event-loop thread and the task actor's thread.
"""

from __future__ import annotations

import sys
import traceback

from ._ports import Failure


class EncodeError(ValueError):
    """A result (or a message body) that a sink cannot encode, such as a JSON body holding
    an object or NaN. It fails only the message it belongs to, with kind `encode`, and is
    never retried: the same result would not encode the next time either."""


#: Failure kinds the supervisor never retries: the same bytes or result fail again, and
#: a task's key function (`key`) gives the same error for the same message.
NOT_RETRIED = frozenset({"decode", "encode", "key"})


class RemoteFailure(Exception):
    """Raised by an executor (`TaskPort.executor`) for a handler that failed in another
    process, ran past its deadline (kind `timeout`) or whose process died (kind
    `crashed`): it carries the Failure as built where that happened."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.kind}: {failure.exception_type}: {failure.message}")
        self.failure = failure


def failure_from(exc: BaseException, kind: str | None = None) -> Failure:
    """The Failure of `exc`; its kind is `kind`, else `encode` for an EncodeError, else
    `error`. A RemoteFailure gives the Failure it carries."""
    if kind is None and isinstance(exc, RemoteFailure):
        return exc.failure
    if kind is None:
        kind = "encode" if isinstance(exc, EncodeError) else "error"
    return Failure(
        kind=kind,
        exception_type=type(exc).__name__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
    )


def timeout_failure(timeout_s: float, thread_ident: int | None = None) -> Failure:
    """A timeout; for a stuck sync handler the traceback shows where its thread is."""
    stack = ""
    if thread_ident is not None:
        frame = sys._current_frames().get(thread_ident)
        if frame is not None:
            stack = "Stack of the handler thread at its deadline:\n" + "".join(
                traceback.format_stack(frame)
            )
    return Failure(
        kind="timeout",
        exception_type="TimeoutError",
        message=f"handler did not finish within timeout_s={timeout_s}",
        traceback=stack,
    )


class HandlerFailed(Exception):
    """Passed to `Source.fail()`: the failure that made the runtime give up."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.kind}: {failure.exception_type}: {failure.message}")
        self.failure = failure
