"""Supervisor: applies retry and dead-letter policies to failed messages, restarts
failed actors with backoff until they fail too often, and stops the app when one of the
threads it cannot run without (the timer, the event loop) dies.

One per app; it runs on its own actor thread and never sleeps (delays go to the Timer).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._base import ACK, FAIL, RESTART, RETRY, EngineActor, Request, tell_quietly
from ._failure import NOT_RETRIED, HandlerFailed, failure_from
from ._failure_log import FAILURES, max_attempts_of
from ._ports import Failure
from ._runtime import MessageFailed, TaskRuntime
from ._sink import PublishJob
from ._stats import RuntimeStats
from ._timer import MAX_DELAY_S, Timer

logger = logging.getLogger("onestep.actors.supervisor")


def _executions(delivery: Any, failure: Failure) -> int:
    """How many times the handler ran on the message (none for one that did not decode)."""
    return int(delivery.attempts) + (0 if failure.kind == "decode" else 1)


class ActorFailed:
    """Tells the Supervisor that an actor's resource broke (not a single message)."""

    __slots__ = ("error", "label", "ref")

    def __init__(self, ref: Any, label: str, error: BaseException) -> None:
        self.ref = ref
        self.label = label
        self.error = error


class CoreFailed:
    """Tells the Supervisor that a part the app cannot run without died (the timer or
    the event-loop thread, an actor that stopped on its own): the app stops."""

    __slots__ = ("error", "label")

    def __init__(self, label: str, error: BaseException) -> None:
        self.label = label
        self.error = error


class ActorRecovered:
    """Tells the Supervisor that a restarted actor works again."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label


class Health(Request):
    """Asks the Supervisor which actors are down: {label: last error}."""

    __slots__ = ()


class RestartPolicy:
    """At most `max_restarts` restarts of one actor within `window_s`, with backoff. The
    default backoff (0.5, 1, 2, 4, 8 s) rides out a broker or database restart of about
    15 s before the app gives up."""

    def __init__(
        self,
        max_restarts: int = 5,
        window_s: float = 60.0,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s

    def record(self, history: deque[float], now: float) -> int:
        """Count a failure at `now` (monotonic) in `history`, the failures of one part
        within `window_s`, oldest first; returns how many that window holds now."""
        history.append(now)
        while history and now - history[0] > self.window_s:
            history.popleft()
        return len(history)

    def exceeded(self, failures: int) -> bool:
        """Whether `failures` within the window are more than the restarts allowed."""
        return failures > self.max_restarts

    def backoff_s(self, failures: int) -> float:
        """The wait before the restart that follows the `failures`-th failure in the
        window: min_backoff_s, doubling each time, at most max_backoff_s."""
        return float(min(self.max_backoff_s, self.min_backoff_s * 2.0 ** (failures - 1)))


class AppFailed(RuntimeError):
    """The app stopped because an actor failed more often than its restart policy allows."""


class Supervisor(EngineActor):
    label = "supervisor"

    def __init__(
        self,
        *,
        timer: Timer,
        on_fatal: Callable[[BaseException], None],
        restarts: RestartPolicy | None = None,
        stats: RuntimeStats | None = None,
    ) -> None:
        super().__init__()
        self._timer = timer
        self._stats = stats
        self._on_fatal = on_fatal
        self._policy = restarts or RestartPolicy()
        self._history: dict[str, deque[float]] = {}
        self._handlers[MessageFailed] = self._on_message_failed
        self._handlers[ActorFailed] = self._on_actor_failed
        self._handlers[ActorRecovered] = self._on_actor_recovered
        self._handlers[CoreFailed] = self._on_core_failed
        self._handlers[Health] = self._on_health
        self._down: dict[str, str] = {}
        self.restarts = 0
        # the failure log writes a flood's summary on this app's timer
        FAILURES.attach(timer.call_later)

    def on_stop(self) -> None:
        """Runs on the supervisor's thread as it stops: write pending flood summaries."""
        FAILURES.detach(self._timer.call_later)
        super().on_stop()

    # -- message failures ----------------------------------------------------------------

    def _on_message_failed(self, message: MessageFailed) -> None:
        """Retry, or dead-letter and settle; runs on the supervisor's thread."""
        runtime, delivery, failure = message.runtime, message.delivery, message.failure
        delay = self._next_delay(runtime, delivery, failure)
        events = runtime.events
        if delay is not None:
            if events is not None:
                events.emit("retried", delivery, message.duration_s, failure)
            task = runtime.task
            FAILURES.retried(
                task.name, delivery.attempts + 1, max_attempts_of(task.retry), failure, delay
            )
            runtime.settle(delivery, RETRY, delay)
            return
        if not runtime.dead_letter:
            self._give_up(runtime, delivery, failure, message.duration_s)
            return
        try:
            body, meta = runtime.task.dead_letter_record(delivery, failure)
        except Exception as exc:
            logger.exception("task %r: cannot build the dead letter", runtime.task.name)
            self._give_up(runtime, delivery, failure_from(exc), message.duration_s)
            return
        context = (runtime, delivery, failure, message.duration_s)
        PublishJob(body, meta, runtime.dead_letter, self._dead_lettered, context).advance()

    @staticmethod
    def _next_delay(runtime: TaskRuntime, delivery: Any, failure: Failure) -> float | None:
        if failure.kind in NOT_RETRIED:
            return None  # the same bytes never decode, the same result never encodes
        policy = runtime.task.retry
        try:
            delay = policy.next_delay(delivery.attempts + 1, failure)
        except BaseException:  # SystemExit too: the message must still be settled
            logger.exception("task %r: retry policy failed; giving up", runtime.task.name)
            return None
        if delay is None or (
            type(delay) in (float, int) and 0 <= delay <= MAX_DELAY_S  # false for NaN
        ):
            return delay
        # A custom policy's bug: a delay the timer or the source could not honour (1e10,
        # NaN, -1, "5") is not guessed at; the message goes the give-up way (dead letter,
        # or failed at its source), so nothing is lost and the log says why.
        logger.error(
            "task %r: retry policy %r returned delay %r; a retry delay must be None or a "
            "number from 0 to %.0f s (30 days): giving up on the message",
            runtime.task.name,
            policy,
            delay,
            MAX_DELAY_S,
        )
        return None

    @staticmethod
    def _dead_lettered(job: PublishJob, error: BaseException | None) -> None:
        """Runs where the last dead-letter sink accepted (any thread)."""
        runtime, delivery, failure, duration_s = job.context
        if error is not None:
            logger.error(
                "task %r: dead-letter sink failed (%s); failing the message at its source",
                runtime.task.name,
                error,
            )
            Supervisor._give_up(runtime, delivery, failure, duration_s)
            return
        events = runtime.events
        if events is not None:
            events.emit("dead_lettered", delivery, duration_s, failure)
            events.emit("failed", delivery, duration_s, failure)
        task = runtime.task
        FAILURES.dead_lettered(
            task.name, _executions(delivery, failure), max_attempts_of(task.retry), failure
        )
        # ACK with the failure: a source that defines `dead_lettered(delivery, error)`
        # gets that call instead of `ack` (a table row then ends `dead`, not `done`)
        runtime.settle(delivery, ACK, error=HandlerFailed(failure))
        runtime.gave_up(delivery, failure)

    @staticmethod
    def _give_up(runtime: TaskRuntime, delivery: Any, failure: Failure, duration: Any) -> None:
        if runtime.events is not None:
            runtime.events.emit("failed", delivery, duration, failure)
        task = runtime.task
        FAILURES.failed(
            task.name, _executions(delivery, failure), max_attempts_of(task.retry), failure
        )
        runtime.settle(delivery, FAIL, error=HandlerFailed(failure))
        runtime.gave_up(delivery, failure)

    # -- actor failures ------------------------------------------------------------------

    def _on_actor_recovered(self, message: ActorRecovered) -> None:
        self._down.pop(message.label, None)

    def _on_health(self, _: Health) -> dict[str, str]:
        return dict(self._down)

    def _on_core_failed(self, message: CoreFailed) -> None:
        """A core part died: nothing can restart it, so the app stops with AppFailed."""
        error_text = f"{type(message.error).__name__}: {message.error}"
        self._down[message.label] = f"died: {error_text}"
        error = AppFailed(f"{message.label} died: {error_text}")
        error.__cause__ = message.error
        logger.error("%s", error)
        self._on_fatal(error)

    def _on_actor_failed(self, message: ActorFailed) -> None:
        """Restart the actor after a backoff, or stop the app if it fails too often."""
        self._down[message.label] = f"{type(message.error).__name__}: {message.error}"
        policy = self._policy
        now = time.monotonic()
        failures = policy.record(self._history.setdefault(message.label, deque()), now)
        if policy.exceeded(failures):
            error = AppFailed(
                f"{message.label} failed {failures} times within {policy.window_s:g} s "
                f"(limit {policy.max_restarts} restarts); last error: "
                f"{type(message.error).__name__}: {message.error}"
            )
            error.__cause__ = message.error
            logger.error("%s", error)
            self._on_fatal(error)
            return
        backoff = policy.backoff_s(failures)
        logger.warning(
            "%s failed (%s: %s); restarting in %.2f s (%d/%d in %g s)",
            message.label,
            type(message.error).__name__,
            message.error,
            backoff,
            failures,
            policy.max_restarts,
            policy.window_s,
        )
        self.restarts += 1
        if self._stats is not None:
            self._stats.restarted(message.label)
        self._timer.call_later(backoff, tell_quietly, message.ref, RESTART)
