"""The scheduler thread: runs a cheap callback (usually `ActorRef.tell`) after a delay.

Delayed retries, idle polls, deadline checks and restart backoff all go through it,
so no actor ever sleeps. Created and started by the ActorSystem, which learns through
`on_death` if the thread ever ends without being stopped.
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

#: The longest delay `call_later` schedules: 30 days, the bound `onestep` puts on every
#: delay a user gives (`onestep._values.MAX_DELAY_S`; a test keeps the two equal). A
#: longer, infinite or NaN delay reaching the timer anyway is clamped and logged (a
#: negative one is due at once), never allowed to break the thread.
MAX_DELAY_S = 30 * 86_400.0

# The longest single wait of the timer thread. A Condition wait longer than
# threading.TIMEOUT_MAX (about 292 years) raises OverflowError, which killed the thread
# (issue 13); a due time further away is waited for in steps of at most a day.
_MAX_WAIT_S = min(86_400.0, threading.TIMEOUT_MAX)

DeathCallback = Callable[[str, BaseException], None]


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
    """A min-heap of due times served by one daemon thread.

    `on_death(label, error)`, if set before `start()`, is called on the timer thread if
    that thread ends without `stop()` (a bug in the timer itself: a callback's error is
    logged and never ends it).
    """

    label = "timer"

    def __init__(self, name: str = "onestep-timer", on_death: DeathCallback | None = None) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self.on_death = on_death
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def call_later(self, delay_s: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run `callback(*args)` on the timer thread after `delay_s` seconds.

        Callable from any thread. The callback must not block. After `stop()` the call is
        dropped (a MemoryQueue outliving its app still asks it to wake its subscriber), so
        a stopped timer's heap never grows.
        """
        if not 0.0 <= delay_s <= MAX_DELAY_S:  # one comparison; false for NaN too
            delay_s = _clamped(delay_s, callback)
        handle = TimerHandle(time.monotonic() + delay_s, callback, args)
        with self._cond:
            if self._stopped:
                handle.cancelled = True
                return handle
            heapq.heappush(self._heap, (handle.when, next(self._counter), handle))
            if self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def _main(self) -> None:
        """The timer thread's body: serve the heap, and report an unexpected end."""
        error: BaseException | None = None
        try:
            self._run()
        except BaseException as exc:
            error = exc
        if self._stopped:
            return
        if error is None:
            error = RuntimeError("the timer thread ended without being stopped")
        logger.critical("the timer thread died", exc_info=error)
        if self.on_death is not None:
            self.on_death(self.label, error)

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
                    self._cond.wait(min(wait_s, _MAX_WAIT_S))
                if self._stopped:
                    return
                _, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            try:
                handle.callback(*handle.args)
            except BaseException:  # SystemExit too: one bad callback must not stop all timing
                logger.exception("timer callback %r failed", handle.callback)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)


def _clamped(delay_s: Any, callback: Callable[..., Any]) -> float:
    """A delay outside 0..MAX_DELAY_S brought inside it: a negative one is due now (as
    a deadline already passed is), a longer or infinite one waits MAX_DELAY_S, and NaN
    counts as 0; the last two are bugs of the caller and are logged."""
    if delay_s < 0:
        return 0.0
    clamped = MAX_DELAY_S if delay_s > MAX_DELAY_S else 0.0
    logger.warning(
        "timer: delay %r for %r is not a number from 0 to %.0f s; using %.0f s",
        delay_s,
        callback,
        MAX_DELAY_S,
        clamped,
    )
    return clamped
