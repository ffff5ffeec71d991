"""The failure log: one line per retry, dead letter, final failure or timeout, on the
logger `onestep.failures`, with its fields as `extra` (JSON logs carry them).

Called by the Supervisor (its thread, or a dead-letter sink's thread), the TaskActor (a
thread abandoned at its deadline) and a process executor (a worker process killed at its
deadline): only on failure paths, so a message that succeeds costs nothing here. A flood
is cut to `cap` lines per task per `interval_s`, then one "... and N more" line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ._ports import Failure

logger = logging.getLogger("onestep.failures")

#: Lines per task per interval before the rest of a flood is only counted.
FLOOD_CAP = 10
#: The interval (seconds) over which FLOOD_CAP counts.
FLOOD_INTERVAL_S = 60.0


class _Window:
    __slots__ = ("logged", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0


class FailureLog:
    """Writes the failure lines, at most `cap` per task every `interval_s`. Every method
    may be called from any thread."""

    def __init__(self, cap: int = FLOOD_CAP, interval_s: float = FLOOD_INTERVAL_S) -> None:
        self.cap = cap
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._timers: list[Callable[..., Any]] = []

    # -- the four kinds of line ----------------------------------------------------------

    def retried(
        self,
        task: str,
        attempt: int,
        max_attempts: int | None,
        failure: Failure,
        delay_s: float,
    ) -> None:
        """Attempt `attempt` (1-based) failed; the next one runs in `delay_s`."""
        of = "" if max_attempts is None else f" of {max_attempts}"
        self._log(
            logging.WARNING,
            task,
            "task %r: attempt %d%s failed: %s: %s; retrying in %.3g s",
            (task, attempt, of, failure.exception_type, failure.message, delay_s),
            _fields("retry", task, attempt, max_attempts, failure, delay_s),
        )

    def dead_lettered(
        self, task: str, attempt: int, max_attempts: int | None, failure: Failure
    ) -> None:
        """The message went to the task's dead-letter sink after `attempt` executions."""
        self._log(
            logging.ERROR,
            task,
            "task %r: message dead-lettered after %d attempt(s): %s: %s",
            (task, attempt, failure.exception_type, failure.message),
            _fields("dead_letter", task, attempt, max_attempts, failure, None),
        )

    def failed(self, task: str, attempt: int, max_attempts: int | None, failure: Failure) -> None:
        """The message failed for good at its source (no dead-letter sink, or it failed)."""
        self._log(
            logging.ERROR,
            task,
            "task %r: gave up on a message after %d attempt(s): %s: %s",
            (task, attempt, failure.exception_type, failure.message),
            _fields("failed", task, attempt, max_attempts, failure, None),
        )

    def timed_out(self, task: str, attempt: int, timeout_s: float | None, what: str) -> None:
        """A handler ran past `timeout_s` and was stopped: `what` says how ("its thread is
        abandoned (2 stuck)", "its worker process (pid 123) was killed")."""
        fields = {
            "outcome": "timeout",
            "task": task,
            "attempt": attempt,
            "timeout_s": timeout_s,
            "exception_type": "TimeoutError",
        }
        self._log(
            logging.WARNING,
            task,
            "task %r: attempt %d exceeded timeout_s=%s; %s",
            (task, attempt, timeout_s, what),
            fields,
        )

    # -- the flood cap -------------------------------------------------------------------

    def _log(
        self, level: int, task: str, msg: str, args: tuple[Any, ...], extra: dict[str, Any]
    ) -> None:
        if not logger.isEnabledFor(level):
            return  # --quiet-failures, or a level set on onestep.failures
        now = time.monotonic()
        summary = None
        with self._lock:
            window = self._windows.get(task)
            if window is None or now - window.start >= self.interval_s:
                if window is not None and window.suppressed:
                    # summed up here: the window's timer then finds nothing left
                    summary, window.suppressed = window.suppressed, 0
                window = self._windows[task] = _Window(now)
            if window.logged >= self.cap:
                window.suppressed += 1
                if window.suppressed == 1:
                    self._summarise_later(task, window)
                return
            window.logged += 1
        if summary is not None:
            self._summary(task, summary)
        logger.log(level, msg, *args, extra=extra)

    def attach(self, call_later: Callable[..., Any]) -> None:
        """Use `call_later(delay_s, fn, *args)` (a running app's Timer) to write each
        flood's summary when its window ends; called by the Supervisor as it starts."""
        with self._lock:
            self._timers.append(call_later)

    def detach(self, call_later: Callable[..., Any]) -> None:
        """Forget `call_later` and write every pending summary now; called by the
        Supervisor as it stops (its timer stops with it)."""
        with self._lock:
            if call_later in self._timers:
                self._timers.remove(call_later)
            pending = [(task, w.suppressed) for task, w in self._windows.items() if w.suppressed]
            for window in self._windows.values():
                window.suppressed = 0
        for task, count in pending:
            self._summary(task, count)

    def _summarise_later(self, task: str, window: _Window) -> None:
        """Write the window's "... and N more" line when it ends, on the timer of a
        running app (else at the next line of the task, or when the app stops). Called
        with the lock held."""
        if self._timers:
            delay = max(0.0, window.start + self.interval_s - time.monotonic())
            self._timers[-1](delay, self._window_ended, task, window)

    def _window_ended(self, task: str, window: _Window) -> None:
        """Runs on the app's timer thread at the end of a window that dropped lines."""
        with self._lock:
            count, window.suppressed = window.suppressed, 0
            if self._windows.get(task) is window:
                del self._windows[task]
        if count:
            self._summary(task, count)

    def _summary(self, task: str, count: int) -> None:
        logger.warning(
            "task %r: ... and %d more failure line(s) in %g s (at most %d a task per interval)",
            task,
            count,
            self.interval_s,
            self.cap,
            extra={"outcome": "summary", "task": task, "suppressed": count},
        )


def _fields(
    outcome: str,
    task: str,
    attempt: int,
    max_attempts: int | None,
    failure: Failure,
    delay_s: float | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "outcome": outcome,
        "task": task,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "failure_kind": failure.kind,
        "exception_type": failure.exception_type,
        "error": failure.message,
    }
    if delay_s is not None:
        fields["delay_s"] = delay_s
    return fields


#: The process's failure log (one cap per task name, whatever app runs it).
FAILURES = FailureLog()


def max_attempts_of(policy: Any) -> int | None:
    """The policy's `max_attempts` when it declares one (MaxAttempts,
    ExponentialBackoff), else None."""
    value = getattr(policy, "max_attempts", None)
    return value if type(value) is int else None
