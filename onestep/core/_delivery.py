"""Delivery, Source and Sink: the contracts between onestep and whatever moves messages.

Users subclass Source and Sink; the runtime calls a source only on its SourceActor's
thread and a sink only on its SinkActor's thread, so neither needs to be thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .._onestep_app import OneStepApp

_REQUIRED_SOURCE_METHODS = ("fetch", "ack", "retry", "fail")


class Delivery:
    """One message handed to a task: `payload` goes to the handler as `item`.

    `attempts` counts earlier executions of this message. `handle` is whatever the
    source needs to settle it (a delivery tag, a row id). `error` is set by a source
    that could not decode the message: the runtime dead-letters it with kind `decode`
    without calling the handler. `task` is the name of the task handling it. `reply`,
    set by a request-reply source, is called with `(result, None)` after success or
    `(None, failure)` once the message failed for good; a reply may define
    `encode(result)`, called as soon as the handler returned and before anything is
    published or acked: an exception it raises (EncodeError for a result it cannot
    encode) fails the message instead.
    """

    # __slots__ halves the size of a Delivery (56 vs 104 bytes plus a dict) and makes
    # creating one about 25% faster; MemoryQueue makes one per put.
    __slots__ = ("_meta", "attempts", "error", "handle", "payload", "reply", "task")

    def __init__(
        self,
        payload: Any,
        *,
        meta: dict[str, Any] | None = None,
        attempts: int = 0,
        handle: Any = None,
        error: BaseException | None = None,
    ) -> None:
        if type(attempts) is not int or attempts < 0:
            raise ValueError(f"attempts must be a non-negative int, got {attempts!r}")
        self.payload = payload
        # The meta dict is made on first read: most messages never carry any, and an
        # empty dict is 64 bytes a queued message (100,000 preloaded: -6 MB peak RSS).
        self._meta = meta
        self.attempts = attempts
        self.handle = handle
        self.error = error
        self.task: str | None = None
        # Set by a request-reply source: called with (result, None) once the message
        # succeeded, or (None, failure) once it failed for good.
        self.reply: Any = None

    @property
    def meta(self) -> dict[str, Any]:
        meta = self._meta
        if meta is None:
            meta = self._meta = {}
        return meta

    @meta.setter
    def meta(self, value: dict[str, Any]) -> None:
        self._meta = value

    def __repr__(self) -> str:
        return f"Delivery(payload={self.payload!r}, meta={self.meta!r}, attempts={self.attempts})"


@dataclass(frozen=True)
class SourceContext:
    """Given to a source's optional `attach(context)` when its app starts: the app (for
    its name and state store), the task it feeds, and `report(kind, meta)` to send a
    TaskEvent that no delivery carries (a schedule's skipped tick)."""

    app: OneStepApp
    task: str
    report: Callable[[str, dict[str, Any]], None]


class Endpoint:
    """What sources and sinks share: a name (the class name unless set), and `open()` /
    `close()`, which run on the owning actor's thread (no-ops here)."""

    @property
    def name(self) -> str:
        return self.__dict__.get("_name") or type(self).__name__

    @name.setter
    def name(self, value: str) -> None:
        self.__dict__["_name"] = value

    def open(self) -> Any:
        """Connect; runs on the owning actor's thread, before the first fetch or publish."""
        return None

    def close(self) -> Any:
        """Disconnect; runs on the owning actor's thread at shutdown or restart."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "name": self.name}


class Source(Endpoint):
    """Where a task's messages come from.

    Subclasses implement `fetch()` (returning a list of Delivery; it may take a `limit`
    argument, the free capacity of the task), `ack(delivery)`, `retry(delivery,
    delay_s=None)` and `fail(delivery, error=None)`; optionally `open()`, `close()`,
    `release(delivery)` and `dead_lettered(delivery, error)` (called instead of `ack`
    once the message's dead letter was stored; `error` is a HandlerFailed). Each may be
    `def` or `async def`. All of them run on the
    source's actor thread; `async def` ones run on the event loop while that actor waits.

    For tracing (`OneStepApp(tracing=True)`) a source may declare the class attribute
    `messaging_system` ("kafka", say) and a `message_id(delivery)` method (called on the
    thread that runs the handler): the execution's span names them.
    """

    #: How long the runtime waits before fetching again after an empty fetch.
    poll_interval_s: ClassVar[float] = 0.05

    def fetch(self, limit: int) -> Any:
        """Up to `limit` ready messages as a list of Delivery, `[]` when there are none
        (the runtime fetches again after `poll_interval_s`). `limit` is the task's free
        capacity; a source may also define `fetch()` without it."""
        raise NotImplementedError(f"{type(self).__name__} must implement fetch()")

    def ack(self, delivery: Delivery) -> Any:
        """The message succeeded and every emit sink accepted its result: remove it for
        good, so that no consumer sees it again."""
        raise NotImplementedError(f"{type(self).__name__} must implement ack()")

    def retry(self, delivery: Delivery, delay_s: float | None = None) -> Any:
        """Deliver the message again after `delay_s` seconds (at once with None or 0),
        with `attempts` one higher; the count travels with the message, so it survives
        a restart."""
        raise NotImplementedError(f"{type(self).__name__} must implement retry()")

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> Any:
        """The retry policy gave up and the task has no dead-letter sink: never deliver
        the message again (drop it, or keep it where an operator can see it). `error` is
        a HandlerFailed carrying the Failure."""
        raise NotImplementedError(f"{type(self).__name__} must implement fail()")

    def release(self, delivery: Delivery) -> Any:
        """Give an unfinished delivery back at shutdown, attempts unchanged.

        The default calls `retry(delivery)`; override it where the source can requeue
        without counting an attempt.
        """
        return self.retry(delivery, None)


class Sink(Endpoint):
    """Where a task's results go. Subclasses implement `publish(body, meta=None)` (sync or
    async) and optionally `open()`/`close()`; all run on the sink's actor thread.

    A sink that writes faster in batches may implement `publish_batch(items)` instead
    (a list of `(body, meta)`, all accepted or all failed) and set `max_batch`: results
    that wait for the sink are then handed over together.
    """

    def publish(self, body: Any, meta: dict[str, Any] | None = None) -> Any:
        """Store one result with its meta; return only once it is stored (the message
        is acked after every emit sink returned), raise if it was not."""
        raise NotImplementedError(f"{type(self).__name__} must implement publish()")


def missing_source_methods(source: Any) -> list[str]:
    """The required Source methods that `source` does not implement."""
    missing = []
    for method in _REQUIRED_SOURCE_METHODS:
        impl = getattr(type(source), method, None)
        if impl is None or impl is getattr(Source, method):
            missing.append(method)
    return missing


def is_sink(obj: Any) -> bool:
    """True for an object that implements `publish` or `publish_batch`."""
    publish = getattr(type(obj), "publish", None)
    if callable(publish) and publish is not Sink.publish:
        return True
    return callable(getattr(type(obj), "publish_batch", None))
