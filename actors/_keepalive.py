"""Keepalive: the timer chain through which a source's or sink's actor calls the
endpoint's `keepalive()` on its own thread (broker heartbeats, lease renewal).

Owned by a SourceActor or SinkActor; started when the endpoint opens, stopped when it
closes. The timer only sends a KEEPALIVE message, so the call runs between other
messages and never blocks the actor's mailbox for longer than `keepalive()` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._base import KEEPALIVE, tell_quietly
from ._timer import Timer, TimerHandle


class Keepalive:
    """Sends KEEPALIVE to an actor every `interval_s` while started."""

    __slots__ = ("_handle", "_ref", "_timer", "call", "interval_s")

    def __init__(self, endpoint: Any, timer: Timer) -> None:
        call = getattr(endpoint, "keepalive", None)
        interval = getattr(endpoint, "keepalive_interval_s", None) if callable(call) else None
        #: The endpoint's keepalive(), or None when it has none (or no positive interval).
        self.call: Callable[[], Any] | None = None
        self.interval_s = 0.0
        if call is not None and isinstance(interval, int | float) and interval > 0:
            self.call = call
            self.interval_s = float(interval)
        self._timer = timer
        self._ref: Any = None
        self._handle: TimerHandle | None = None

    def start(self, ref: Any) -> None:
        """Schedule the first KEEPALIVE; runs on the owning actor's thread."""
        if self.call is None:
            return
        self._ref = ref
        self.schedule()

    def schedule(self) -> None:
        """Schedule the next KEEPALIVE, unless stopped; runs on the owning actor's thread."""
        if self._ref is None:
            return
        self._handle = self._timer.call_later(self.interval_s, tell_quietly, self._ref, KEEPALIVE)

    @property
    def running(self) -> bool:
        return self._ref is not None

    def stop(self) -> None:
        """No more KEEPALIVE; runs on the owning actor's thread."""
        self._ref = None
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
