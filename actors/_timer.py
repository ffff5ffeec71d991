"""The scheduler thread: runs a cheap callback (usually `ActorRef.tell`) after a delay.

Delayed retries, idle polls, deadline checks and restart backoff all go through it,
so no actor ever sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("onestep.actors.timer")


class TimerHandle:
    """A scheduled call; `cancel()` makes it a no-op."""

    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timer:
    """A min-heap of due times served by one daemon thread."""

    def __init__(self, name: str = "onestep-timer") -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def call_later(self, delay_s: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run `callback(*args)` on the timer thread after `delay_s` seconds.

        Callable from any thread. The callback must not block.
        """
        handle = TimerHandle(time.monotonic() + max(0.0, delay_s), callback, args)
        with self._cond:
            heapq.heappush(self._heap, (handle.when, next(self._counter), handle))
            if self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait_s = self._heap[0][0] - time.monotonic()
                    if wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                if self._stopped:
                    return
                _, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            try:
                handle.callback(*handle.args)
            except Exception:
                logger.exception("timer callback %r failed", handle.callback)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
