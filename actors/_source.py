"""SourceActor: pulls deliveries from one source as the task's credits allow.

Every call into the source (open, fetch, ack, retry, fail, release, close) runs on this
actor's thread. The task holds `concurrency` credits; a fetch asks for at most the free
credits and a settled delivery gives its credit back, so nothing buffers without bound.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._base import (
    ACK,
    FAIL,
    KEEPALIVE,
    POLL,
    RELEASE,
    RESTART,
    RETRY,
    TIMED_POLL,
    EngineActor,
    Request,
    Settle,
    tell_quietly,
)
from ._keepalive import Keepalive
from ._loop import EventLoopThread
from ._ports import SourcePort
from ._runtime import subscribe_source
from ._timer import MAX_DELAY_S, Timer, TimerHandle

if TYPE_CHECKING:
    from ._runtime import TaskRuntime

logger = logging.getLogger("onestep.actors.source")


class StartFetching(Request):
    __slots__ = ()


class StopFetching(Request):
    __slots__ = ()


class ReleaseAll(Request):
    __slots__ = ()


class CloseSource(Request):
    __slots__ = ()


class SourceActor(EngineActor):
    """Owns one source object and feeds one task."""

    def __init__(
        self,
        source: SourcePort,
        runtime: TaskRuntime,
        *,
        loop: EventLoopThread,
        timer: Timer,
        supervisor: Any,
        idle_poll_s: float,
    ) -> None:
        super().__init__()
        self.source = source
        self.label = f"source {runtime.task.source_name!r}"
        self._runtime = runtime
        self._loop = loop
        self._timer = timer
        self._supervisor = supervisor
        self._idle_poll_s = _poll_interval(source, self.label, idle_poll_s)
        self._ledger = runtime.ledger
        self._fetching = False
        self._broken = False
        self._opened = False
        self._poll_queued = False
        self._poll_timer: TimerHandle | None = None
        self._poll_due = 0.0
        # A source that keeps time (a schedule) says when to look again.
        self._poll_delay: Callable[[], float] | None = getattr(source, "poll_delay", None)
        self._wakeable = False
        self._flush: Callable[[], Any] | None = getattr(source, "flush", None)
        self._dead_lettered: Callable[..., Any] | None = getattr(source, "dead_lettered", None)
        self._unflushed = False
        self._fetch = self._bind_fetch()
        self._keepalive = Keepalive(source, timer)
        self._handlers.update(
            {
                POLL: self._on_poll,
                KEEPALIVE: self._on_keepalive,
                TIMED_POLL: self._on_timed_poll,
                RESTART: self._on_restart,
                Settle: self._on_settle,
                StartFetching: self._on_start_fetching,
                StopFetching: self._on_stop_fetching,
                ReleaseAll: self._on_release_all,
                CloseSource: self._on_close,
            }
        )

    # -- set-up -------------------------------------------------------------------------

    def _bind_fetch(self) -> Callable[[int], Any]:
        fetch: Callable[..., Any] = self.source.fetch
        try:
            takes_limit = len(inspect.signature(fetch).parameters) >= 1
        except (TypeError, ValueError):
            takes_limit = True
        call = self._loop.call
        if inspect.iscoroutinefunction(fetch):
            if takes_limit:
                return lambda limit: call(fetch, limit)
            return lambda limit: call(fetch)
        if takes_limit:
            return fetch
        return lambda limit: fetch()

    def _open(self) -> None:
        opener = getattr(self.source, "open", None)
        if opener is not None:
            self._loop.call(opener)
        self._opened = True
        self._keepalive.start(self.actor_ref)
        if callable(getattr(self.source, "subscribe", None)) and not self._runtime.direct:
            self._wakeable = True
            subscribe_source(self.source, self._wake, self._timer)

    def _wake(self) -> None:
        """Called by the source from any thread when it has messages again."""
        tell_quietly(self.actor_ref, POLL)

    def _on_start_fetching(self, _: StartFetching) -> None:
        """Open the source and start fetching; runs on this actor's thread (via ask)."""
        self._open()
        if self._runtime.direct:
            # the task's workers (or pullers) take from this thread-safe source themselves
            self._runtime.open_direct()
            return
        self._fetching = True
        self._poll()

    def _on_keepalive(self, _: Any) -> None:
        """Let the open source keep its connection or leases alive; runs on this actor's
        thread, every `keepalive_interval_s`, however long the task's handlers run."""
        keepalive = self._keepalive
        if not keepalive.running:
            return  # closed since the timer fired
        if not self._broken and keepalive.call is not None:
            try:
                self._loop.call(keepalive.call)
            except Exception as exc:
                self._crash(exc)
        keepalive.schedule()

    # -- fetching ------------------------------------------------------------------------

    def _on_poll(self, _: Any) -> None:
        self._poll_queued = False
        self._flush_settled()
        self._poll()

    def _on_timed_poll(self, _: Any) -> None:
        self._poll_timer = None
        self._poll()

    def _queue_poll(self) -> None:
        """Poll again as soon as the messages already in the mailbox are handled."""
        if self._poll_queued:
            return
        self._poll_queued = True
        self.actor_ref.tell(POLL)

    def _poll_later(self, delay_s: float) -> None:
        """Poll again after `delay_s`, unless a timed poll is due sooner already."""
        due = time.monotonic() + delay_s
        if self._poll_timer is not None:
            if self._poll_due <= due:
                return
            self._poll_timer.cancel()
        self._poll_due = due
        self._poll_timer = self._timer.call_later(delay_s, tell_quietly, self.actor_ref, TIMED_POLL)

    def _poll(self) -> None:
        if not self._fetching or self._broken:
            return
        free = self._ledger.free()
        poll_delay = self._poll_delay
        if free <= 0 and poll_delay is None:
            return
        try:
            # a clocked source is polled without credit too (limit 0) to see time pass
            batch = self._fetch(max(free, 0))
            if poll_delay is not None:
                self._poll_later(poll_delay())
        except Exception as exc:
            self._crash(exc)
            return
        if not batch:
            if not self._wakeable and poll_delay is None:
                self._poll_later(self._idle_poll_s)
            return
        if type(batch) is not list:
            batch = list(batch)
        add = self._ledger.add
        for delivery in batch:
            add(delivery)
        runtime = self._runtime
        runtime.dispatch(runtime.fetched(batch))
        if self._ledger.free() > 0:
            self._queue_poll()

    # -- settling ------------------------------------------------------------------------

    def _on_settle(self, message: Settle) -> None:
        delivery = message.delivery
        if not self._ledger.remove(delivery):
            return  # released at shutdown, or settled twice: nothing to do
        action = message.action
        try:
            if action is ACK:
                if message.error is not None and self._dead_lettered is not None:
                    # acked after its dead letter was stored (see Supervisor)
                    self._loop.call(self._dead_lettered, delivery, message.error)
                else:
                    self._loop.call(self.source.ack, delivery)
            elif action is RETRY:
                self._loop.call(self.source.retry, delivery, message.delay_s)
                if message.delay_s:
                    # the retried message becomes due later: look again then
                    self._poll_later(message.delay_s)
            elif action is FAIL:
                self._loop.call(self.source.fail, delivery, message.error)
            elif action is RELEASE:
                self._loop.call(self.source.release, delivery)
        except Exception as exc:
            self._crash(exc)
        self._unflushed = True
        if not self.actor_inbox.empty():
            if self._fetching:
                self._queue_poll()
            return
        self._flush_settled()
        if self._fetching:
            self._poll()

    def _flush_settled(self) -> None:
        """Let a source that buffers its acks write them (one batch per empty mailbox)."""
        if not self._unflushed:
            return
        self._unflushed = False
        if self._flush is not None and not self._broken:
            try:
                self._loop.call(self._flush)
            except Exception as exc:
                self._crash(exc)

    # -- failure and restart -------------------------------------------------------------

    def _crash(self, exc: BaseException) -> None:
        if self._broken:
            return
        self._broken = True
        from ._supervisor import ActorFailed

        self._supervisor.tell(ActorFailed(self.actor_ref, self.label, exc))

    def on_crash(self, exc: BaseException) -> None:
        super().on_crash(exc)
        self._crash(exc)

    def _on_restart(self, _: Any) -> None:
        """Reopen the source after a failure; runs on this actor's thread."""
        self._close_quietly()
        try:
            self._open()
        except Exception as exc:
            self._broken = False
            self._crash(exc)
            return
        self._broken = False
        logger.info("%s restarted", self.label)
        from ._supervisor import ActorRecovered

        self._supervisor.tell(ActorRecovered(self.label))
        self._poll()

    # -- shutdown ------------------------------------------------------------------------

    def _on_stop_fetching(self, _: StopFetching) -> None:
        self._fetching = False
        self._ledger.stop()
        if self._runtime.admission is not None:
            # messages waiting for flow control (a token, a key's slot) go back to the
            # source now: shutdown never waits for them
            self._runtime.admission.release_parked()

    def _on_release_all(self, _: ReleaseAll) -> int:
        """Give every unsettled delivery back to the source, attempts unchanged."""
        released = self._ledger.release_all()
        for delivery in released:
            try:
                self._loop.call(self.source.release, delivery)
            except Exception:
                logger.exception("%s could not release a delivery", self.label)
            self._runtime.cancelled(delivery)
        self._unflushed = True
        self._flush_settled()
        return len(released)

    def _close_quietly(self) -> BaseException | None:
        if not self._opened:
            return None
        self._opened = False
        self._keepalive.stop()
        closer = getattr(self.source, "close", None)
        if closer is None:
            return None
        try:
            self._loop.call(closer)
        except Exception as exc:
            logger.warning("%s failed to close: %s", self.label, exc)
            return exc
        return None

    def _on_close(self, _: CloseSource) -> BaseException | None:
        self._fetching = False
        self._flush_settled()
        return self._close_quietly()


def _poll_interval(source: Any, label: str, default: float) -> float:
    """The source's `poll_interval_s`, or `default` (with a warning) when it is not a
    number from 0 to MAX_DELAY_S: a NaN period would make the timer poll without pause."""
    value = getattr(source, "poll_interval_s", default)
    if type(value) in (int, float) and 0 <= value <= MAX_DELAY_S:
        return float(value)
    logger.warning(
        "%s: poll_interval_s=%r is not a number of seconds; using %g", label, value, default
    )
    return default
